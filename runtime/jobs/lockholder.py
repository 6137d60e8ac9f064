"""Who holds the job registry's write lock, and when that holder is a frozen job master.

SQLite's write lock is a POSIX advisory lock (on `jobs.db-shm` in WAL mode, on
`jobs.db` itself with the rollback journal). A process stopped (SIGSTOP, a
debugger, a swapped-out VM) inside one of its short write transactions keeps
that lock for as long as it is stopped, and every other writer -- each
`singa` command, every other job's master -- waits behind it and then fails.
A job master writes the registry each second, so a frozen master sometimes
does hold it.

The registry already calls a master LOST when its heartbeat is older than
`MASTER_SILENT_S` (alive or not). A writer that has waited for the lock asks
`frozen_masters` who holds it; a holder that is a job master of this registry
(same pid *and* start time) and has been silent that long is dead to the
system, and is killed with SIGKILL so that the lock passes on and its job can
be recorded LOST. Nothing is ever matched by name, and a master that is
merely slow (beating within the limit) is never touched.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable
from pathlib import Path

PROC_LOCKS = "/proc/locks"


def _file_id(path: Path) -> tuple[int, int, int] | None:
    """`path`'s (device major, device minor, inode)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return os.major(st.st_dev), os.minor(st.st_dev), st.st_ino


def _parse_id(field: str) -> tuple[int, int, int] | None:
    """A /proc/locks file field, MAJ:MIN:INODE with the device in hex."""
    try:
        maj, mn, ino = field.split(":")
        return int(maj, 16), int(mn, 16), int(ino)
    except ValueError:
        return None


def writers(paths: Iterable[Path], locks_text: str | None = None) -> set[int]:
    """Pids (other than this process) holding a POSIX write lock on any of `paths`.

    `locks_text` is the content of /proc/locks (read when None); an unreadable
    one (not Linux) gives no pids, and the caller just waits as before.
    """
    ids = {i for i in (_file_id(Path(p)) for p in paths) if i}
    if not ids:
        return set()
    if locks_text is None:
        try:
            with open(PROC_LOCKS, encoding="ascii", errors="replace") as f:
                locks_text = f.read()
        except OSError:
            return set()
    found: set[int] = set()
    for line in locks_text.splitlines():
        # "1: POSIX  ADVISORY  WRITE 1234 08:01:5678 120 120" ("->" marks a waiter)
        fields = line.split()
        if "->" in fields or len(fields) < 6:
            continue
        if fields[1] not in ("POSIX", "OFDLCK") or fields[3] != "WRITE":
            continue
        try:
            pid = int(fields[4])
        except ValueError:
            continue
        if _parse_id(fields[5]) in ids and pid > 0 and pid != os.getpid():
            found.add(pid)
    return found


def release_from_frozen_masters(paths: Iterable[Path],
                                silent_master: Callable[[int], int | None]) -> list[tuple[int, int]]:
    """Kill every job master that holds a write lock on `paths` and has been silent
    past the LOST limit. `silent_master(pid)` answers, from the registry (a read,
    which WAL allows beside the held lock), the id of the job whose master is
    that very process (pid and start time) when its heartbeat is older than the
    limit, else None. Returns the (job id, pid) pairs killed."""
    killed = []
    for pid in sorted(writers(paths)):
        job_id = silent_master(pid)
        if job_id is None:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        killed.append((job_id, pid))
    return killed
