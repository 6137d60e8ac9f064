"""Reading a process's log file on this host: its last lines, or lines as they come.

A log can be large (a long job's worker log), so `tail` reads backwards from
the end in blocks and never the whole file. Lines are returned without their
line ending; bytes that are not UTF-8 are replaced, not fatal.
Standard library only: this is on the path of `singa view`, which must start fast.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from runtime.errors import UserError

_BLOCK = 64 * 1024
POLL_INTERVAL = 0.2


def _decode(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


def tail_text(path: str | os.PathLike[str], limit: int = 4096) -> str:
    """The last `limit` bytes of the file `path` as text; "" when it is
    missing or unreadable (for a reason built from a log: never an error)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return _decode(f.read())
    except OSError:
        return ""


def tail(path: str | os.PathLike[str], n: int) -> list[str]:
    """The last `n` lines of the text file `path` (fewer if it has fewer).

    A missing or unreadable file is a UserError naming it.
    """
    if n <= 0:
        return []
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"log file {path} does not exist (the process may not have started "
                        "yet, or the log was removed)") from None
    except OSError as e:
        raise UserError(f"cannot read log file {path}: {e.strerror}") from None
    with f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        chunks: list[bytes] = []
        newlines = 0
        # A last line without its '\n' still counts, so n lines need n (or n+1) newlines.
        while pos > 0 and newlines <= n:
            step = min(_BLOCK, pos)
            pos -= step
            f.seek(pos)
            chunk = f.read(step)
            chunks.append(chunk)
            newlines += chunk.count(b"\n")
    data = b"".join(reversed(chunks))
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the file ends with a newline: no partial last line
    return [_decode(line).rstrip("\r") for line in lines[-n:]]


def _open_when_there(p: Path, stop: Callable[[], bool]) -> BinaryIO | None:
    """`p` opened for reading once it exists; None if `stop()` turns true first."""
    while True:
        try:
            return open(p, "rb")
        except FileNotFoundError:
            if stop():
                try:  # made just before stop() turned true: still read it
                    return open(p, "rb")
                except FileNotFoundError:
                    return None
            time.sleep(POLL_INTERVAL)


def follow(path: str | os.PathLike[str], from_end: bool, stop: Callable[[], bool]) -> Iterator[str]:
    """Yield the lines of `path` as they are appended, polling every 0.2 s.

    `from_end`: start at the current end (only new lines), else at the start.
    Ends when `stop()` is true and nothing more is there to read; a last line
    without its newline is yielded then. A file that does not exist yet is
    waited for (a process that has not started has no log), unless `stop()`.
    A file that shrinks (truncated, rotated in place) is read again from its start.
    """
    p = Path(path)
    f = _open_when_there(p, stop)
    if f is None:
        return
    with f:
        if from_end:
            f.seek(0, os.SEEK_END)
        partial = b""
        while True:
            data = f.read(_BLOCK)
            if data:
                partial += data
                *complete, partial = partial.split(b"\n")
                for line in complete:
                    yield _decode(line).rstrip("\r")
                continue
            try:
                if os.stat(p).st_size < f.tell():
                    f.seek(0)
                    partial = b""
                    continue
            except FileNotFoundError:
                pass
            if stop():
                # One last read: data written just before stop() became true.
                rest = partial + f.read()
                *complete, last = rest.split(b"\n")
                for line in complete:
                    yield _decode(line).rstrip("\r")
                if last:
                    yield _decode(last).rstrip("\r")
                return
            time.sleep(POLL_INTERVAL)
