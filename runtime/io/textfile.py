"""TextFile: one record per line (backend "textfile"), as SINGA's TextFileStore.

Reading gives key = the line number counted from 0, as ASCII bytes (b"0",
b"1", ...), and value = the line without its newline (a trailing "\\r" is
dropped too, so CRLF files read the same). Writing ignores the key, as in
SINGA, and writes the value followed by "\\n"; a value holding a newline is
refused since it could not be read back as one record.
"""
from __future__ import annotations

import os

from runtime.errors import UserError
from runtime.io.store import Store, _check_bytes, store_registry

_BUFSIZE = 1 << 20


@store_registry.register("textfile")
class TextFileStore(Store):
    backend = "textfile"

    def __init__(self, path: str | os.PathLike, mode: str = "r"):
        super().__init__(path, mode)
        if mode == "r" and not os.path.exists(self.path):
            raise UserError(f"textfile store {self.path!r} does not exist")
        if os.path.isdir(self.path):
            raise UserError(f"textfile store {self.path!r} is a directory, expected a file")
        needs_newline = False
        if mode == "a" and os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            # Appending to a file whose last line has no newline would glue
            # the first new value onto it.
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"
        try:
            self._f = open(self.path, {"r": "rb", "w": "wb", "a": "ab"}[mode],
                           buffering=_BUFSIZE)
        except OSError as e:
            raise UserError(f"cannot open textfile store {self.path!r} (mode {mode!r}): "
                            f"{e.strerror or e}") from None
        if needs_newline:
            self._f.write(b"\n")
        self._line = 0

    def read(self) -> tuple[bytes, bytes] | None:
        self._check_mode(reading=True)
        line = self._f.readline()
        if not line:
            return None
        if line.endswith(b"\n"):
            line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        key = str(self._line).encode("ascii")
        self._line += 1
        return key, line

    def seek_to_first(self) -> None:
        self._check_mode(reading=True)
        self._f.seek(0)
        self._line = 0

    def write(self, key: bytes, value: bytes) -> None:
        self._check_mode(reading=False)
        value = _check_bytes("value", value)
        if b"\n" in value:
            raise UserError(f"textfile store {self.path!r}: a value cannot contain a newline "
                            f"(one value per line); got {value[:40]!r}")
        self._f.write(value)
        self._f.write(b"\n")
        self._line += 1
