"""The job registry's own failures, told as one line a user can act on.

SQLite and the filesystem report a broken registry in their words
(`sqlite3.DatabaseError: file is not a database`, `[Errno 30] Read-only file
system`); `translate` turns each into a `JobDBError` -- a `UserError`, so
every `singa` verb ends with that line and exit code 2, no traceback -- that
names the file, says what is wrong and what to do about it.

Standard library only: this is on the path of `singa list`.
"""
from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runtime.errors import UserError

# how long a statement waits on a lock before it is "locked" (the message says 30 s)
BUSY_TIMEOUT_MS = 30_000


class JobDBError(UserError):
    """The job registry (its directory, its file or a row in it) cannot be used."""


def show_path(path: Path | str) -> str:
    """`path` with the home directory written `~`, as a user would type it."""
    p = str(path)
    h = str(Path.home())
    if h != "/" and (p == h or p.startswith(h + os.sep)):
        return "~" + p[len(h):]
    return p


_show = show_path


def _move_aside(path: Path) -> str:
    # The whole home, not just jobs.db: a new registry numbers jobs from 1 again,
    # and their log folders (home/jobs/ID) must not mix with the old jobs' logs.
    h = _show(path.parent)
    return (f"move the singa home aside (mv {h} {h}.broken) and singa makes a new, empty "
            f"registry on its next command, or point SINGA_HOME at another directory")


def _unwritable(path: Path, what: str) -> str:
    return (f"{_show(path)}: {what}; make {_show(path.parent)} writable, or point SINGA_HOME "
            f"at a directory you can write")


def explain(path: Path, e: BaseException) -> JobDBError:
    """The one-line error for failure `e` of the registry file `path` (`home/jobs.db`)."""
    if isinstance(e, JobDBError):
        return e
    if isinstance(e, OSError):
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return JobDBError(_unwritable(path, f"cannot write the job registry "
                                                   f"({e.strerror or e})"))
        return explain_dir(Path(e.filename) if e.filename else path.parent, e, path.parent)
    msg = str(e)
    low = msg.lower()
    if "not a database" in low:
        return JobDBError(f"{_show(path)}: not a singa job registry (SQLite: {msg}); "
                             + _move_aside(path))
    if "malformed" in low or "corrupt" in low:
        return JobDBError(f"{_show(path)}: the job registry is damaged (SQLite: {msg}); "
                             + _move_aside(path))
    if "could not decode" in low:
        return JobDBError(f"{_show(path)}: a row of the job registry cannot be read "
                             f"({msg}); " + _move_aside(path))
    if "readonly" in low or "read-only" in low or not os.access(path.parent, os.W_OK):
        return JobDBError(_unwritable(path, f"cannot write the job registry ({msg})"))
    if "locked" in low or "busy" in low:
        return JobDBError(f"{_show(path)}: the job registry stayed locked for 30 s ({msg}); "
                             "another singa command or job master holds it: retry, or look for "
                             "a stuck singa process")
    if "unable to open" in low:
        return JobDBError(f"{_show(path)}: cannot open the job registry ({msg}); check that "
                             f"it and {_show(path.parent)} are yours and readable")
    if "disk i/o" in low or "full" in low:
        return JobDBError(f"{_show(path)}: cannot write the job registry ({msg}); free space "
                             f"on its disk, or point SINGA_HOME at another directory")
    return JobDBError(f"{_show(path)}: the job registry failed ({type(e).__name__}: {msg}); "
                         + _move_aside(path))


def explain_dir(path: Path, e: OSError, home: Path | None = None) -> JobDBError:
    """The one-line error for a directory of the registry that cannot be made or used."""
    why = e.strerror or str(e)
    if e.errno in (errno.EEXIST, errno.ENOTDIR):
        why = "a file is in the way" + (f" ({why})" if why else "")
    where = home if home is not None else path
    return JobDBError(f"{_show(path)}: cannot create or use the singa home directory: {why}; "
                         f"point SINGA_HOME at a directory you can create and write"
                         + ("" if where == path else f" (it is {_show(where)} now)"))


def bad_row(path: Path, job_id: object, column: str, e: BaseException) -> JobDBError:
    """A row whose JSON column does not decode."""
    return JobDBError(f"{_show(path)}: job {job_id} has an undecodable '{column}' value "
                         f"({e}); " + _move_aside(path))


@contextmanager
def translate(path: Path) -> Iterator[None]:
    """Run the body; a SQLite error or an OSError becomes a JobDBError about `path`.

    What is a bug of the caller passes through with its traceback: an
    IntegrityError (a duplicate key, which the registry's methods report in
    their own words), a ProgrammingError or InterfaceError (misuse of the API),
    and an SQL syntax error.
    """
    try:
        yield
    except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
        raise
    except sqlite3.OperationalError as e:
        if "syntax error" in str(e):
            raise
        raise explain(path, e) from None
    except (sqlite3.DatabaseError, OSError) as e:
        raise explain(path, e) from None


class GuardedConnection:
    """The registry's SQLite connection: every failure of a statement (running it or
    fetching its rows) is translated by `translate`; the rest is sqlite3's."""

    def __init__(self, db: sqlite3.Connection, path: Path):
        self._db = db
        self.path = path

    def execute(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> GuardedCursor:
        with translate(self.path):
            return GuardedCursor(self._db.execute(sql, args), self.path)

    def begin_immediate(self, wait_s: float) -> bool:
        """BEGIN IMMEDIATE, waiting up to `wait_s` for the write lock: False if it
        stayed locked (any other failure is translated as usual)."""
        self._db.execute(f"PRAGMA busy_timeout = {max(0, int(wait_s * 1000))}")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            return True
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                return False
            with translate(self.path):
                raise
        finally:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def close(self) -> None:
        self._db.close()


class GuardedCursor:
    """A cursor of a `GuardedConnection`: rows are decoded as they are fetched, so
    fetching is where an undecodable value fails."""

    def __init__(self, cur: sqlite3.Cursor, path: Path):
        self._cur = cur
        self.path = path

    def fetchone(self) -> Any:
        with translate(self.path):
            return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        with translate(self.path):
            return self._cur.fetchall()

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cur.lastrowid
