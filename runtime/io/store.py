"""Store: a sequence of (key, value) records in a file, as SINGA's `io::Store`.

Input layers read records with `read()` and wrap around with
`seek_to_first()` at the end of the file; output layers and the dataset
importers `write()` them. A backend registers itself in `store_registry`
under the name used by `StoreProto.backend` ("kvfile", "textfile"):

    @store_registry.register("kvfile")
    class KVFileStore(Store): ...

    with open_store("train_data.bin") as store:
        while (rec := store.read()) is not None:
            key, value = rec

`atomic_output(path)` gives a temporary path beside `path` and moves it into
place only when the block succeeds, so a failed import leaves no partial file.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from runtime.errors import UserError
from runtime.registry import Registry

store_registry = Registry("store backend",
                          required=("read", "seek_to_first", "write", "flush", "close"))

MODES = ("r", "w", "a")


class Store:
    """A file of (key, value) records, opened for reading or writing.

    Contract for backends:
    - `__init__(path, mode)`: mode "r" reads from the first record (a missing
      file is a `UserError` naming the path); "w" creates or truncates; "a"
      appends after the last complete record.
    - `read()` returns the next `(key, value)` as bytes, or None at the end of
      the file (it does not wrap: the caller calls `seek_to_first()`).
    - `write(key, value)` takes bytes; records may be buffered until
      `flush()` or `close()`.
    - `close()` is idempotent; a store is also a context manager.
    """

    backend = ""
    _f: IO[Any]  # the open file; every backend's __init__ sets it

    def __init__(self, path: str | os.PathLike, mode: str = "r"):
        if mode not in MODES:
            raise UserError(f"store mode {mode!r} is not one of {', '.join(MODES)}")
        self.path = os.fspath(path)
        self.mode = mode

    def read(self) -> tuple[bytes, bytes] | None:
        raise NotImplementedError

    def seek_to_first(self) -> None:
        raise NotImplementedError

    def write(self, key: bytes, value: bytes) -> None:
        raise NotImplementedError

    # Backends keep their open file in `_f`; flushing and closing it is the same for all.
    def flush(self) -> None:
        if self.mode != "r" and not self._f.closed:
            self._f.flush()

    def close(self) -> None:
        f = getattr(self, "_f", None)
        if f is not None and not f.closed:
            f.close()

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        """The records from the current position to the end of the file."""
        while (rec := self.read()) is not None:
            yield rec

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r} mode {self.mode!r}>"

    # helpers for backends
    def _check_mode(self, reading: bool) -> None:
        if reading and self.mode != "r":
            raise UserError(f"{self.backend} store {self.path!r} is open for writing "
                            f"(mode {self.mode!r}); it cannot be read")
        if not reading and self.mode == "r":
            raise UserError(f"{self.backend} store {self.path!r} is open for reading; "
                            "it cannot be written")


def _check_bytes(what: str, value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"store {what} must be bytes, got {type(value).__name__}")


def open_store(path: str | os.PathLike, backend: str = "kvfile", mode: str = "r") -> Store:
    """Open `path` with the named backend; mode "r", "w" (truncate) or "a" (append)."""
    cls = store_registry.get(backend)
    return cls(path, mode)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path in the same directory as `path`; on success
    replace `path` with it, on any error remove it.

    The parent directory is created if needed. The temporary file is opened
    by the caller, so it gets the usual permissions (umask), unlike mkstemp's 0600.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield str(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
