"""KVFile: SINGA's binary record file (backend "kvfile"; DataShard in v0.1).

A file is a plain sequence of records

    [8-byte little-endian key length][key][8-byte little-endian value length][value]

with no header and no index. `path` may name the file itself or a directory
holding `shard.dat` (a v0.1 DataShard). Reads and writes go through a 1 MiB
buffer. A record cut short at the end of the file is an error on read (it
names the file and byte offset); append mode drops such a partial record
first, as SINGA does, so that a writer killed mid-record can resume.
"""
from __future__ import annotations

import os
import struct

from runtime.errors import UserError
from runtime.io.store import Store, _check_bytes, store_registry

_LEN = struct.Struct("<Q")
_BUFSIZE = 1 << 20
SHARD_FILE = "shard.dat"


def resolve_path(path: str | os.PathLike) -> str:
    """The data file for `path`: `path/shard.dat` if `path` is a directory."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return os.path.join(path, SHARD_FILE)
    return path


@store_registry.register("kvfile")
class KVFileStore(Store):
    backend = "kvfile"

    def __init__(self, path: str | os.PathLike, mode: str = "r"):
        super().__init__(path, mode)
        self.file = resolve_path(self.path)
        if mode == "r":
            if not os.path.exists(self.path):
                raise UserError(f"kvfile store {self.path!r} does not exist")
            if not os.path.isfile(self.file):
                raise UserError(f"kvfile store {self.path!r} is a directory without {SHARD_FILE}")
        try:
            if mode == "r":
                self._f = open(self.file, "rb", buffering=_BUFSIZE)
            elif mode == "w":
                self._f = open(self.file, "wb", buffering=_BUFSIZE)
            else:
                if not os.path.exists(self.file):
                    open(self.file, "xb").close()
                self._f = open(self.file, "r+b", buffering=_BUFSIZE)
        except OSError as e:
            raise UserError(f"cannot open kvfile store {self.file!r} (mode {mode!r}): "
                            f"{e.strerror or e}") from None
        self._offset = 0
        self._size = os.fstat(self._f.fileno()).st_size
        if mode == "a":
            self._offset = self._end_of_complete_records()
            self._f.truncate(self._offset)
            self._f.seek(self._offset)

    # --- reading -----------------------------------------------------------
    def read(self) -> tuple[bytes, bytes] | None:
        self._check_mode(reading=True)
        f = self._f
        start = self._offset
        head = f.read(8)
        if not head:
            return None
        if len(head) < 8:
            self._truncated(start, f"only {len(head)} of the 8 bytes of the key length")
        (klen,) = _LEN.unpack(head)
        self._need(start, 16 + klen, f"a key of {klen} bytes")
        key = f.read(klen)
        (vlen,) = _LEN.unpack(f.read(8))
        self._need(start, 16 + klen + vlen, f"a value of {vlen} bytes")
        value = f.read(vlen)
        self._offset = start + 16 + klen + vlen
        return key, value

    def seek_to_first(self) -> None:
        self._check_mode(reading=True)
        self._f.seek(0)
        self._offset = 0
        self._size = os.fstat(self._f.fileno()).st_size

    def _need(self, start: int, length: int, what: str) -> None:
        # Check lengths against the file size before reading, so a corrupt
        # length is reported instead of allocating a huge buffer.
        if start + length > self._size:
            self._size = os.fstat(self._f.fileno()).st_size  # the file may have grown
            if start + length > self._size:
                self._truncated(start, f"the record claims {what}")

    def _truncated(self, start: int, detail: str) -> None:
        raise UserError(
            f"kvfile {self.file}: truncated or corrupt record at byte offset {start}: "
            f"{detail}, but the file ends at byte {self._size}")

    # --- writing -----------------------------------------------------------
    def write(self, key: bytes, value: bytes) -> None:
        self._check_mode(reading=False)
        key = _check_bytes("key", key)
        value = _check_bytes("value", value)
        f = self._f
        f.write(_LEN.pack(len(key)))
        f.write(key)
        f.write(_LEN.pack(len(value)))
        f.write(value)
        self._offset += 16 + len(key) + len(value)

    def _end_of_complete_records(self) -> int:
        """Byte offset just past the last complete record (seeks over values)."""
        f = self._f
        size = self._size
        end = 0
        while True:
            f.seek(end)
            head = f.read(8)
            if len(head) < 8:
                return end
            (klen,) = _LEN.unpack(head)
            if end + 16 + klen > size:
                return end
            f.seek(end + 8 + klen)
            (vlen,) = _LEN.unpack(f.read(8))
            if end + 16 + klen + vlen > size:
                return end
            end += 16 + klen + vlen
