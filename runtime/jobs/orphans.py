"""What became of a process whose job master is gone (a LOST job's processes).

Without its master a process stops itself after a few seconds of silence
(`runtime.comm.heartbeat._exit_lost`): it prints `ORPHAN_WORDS` as the last
line of its log and exits with `ORPHAN_EXIT`. Nobody waits for it then, so
its exit is read back from what it left: its process group on this host, and
its log. On the path of `singa view`: the standard library and psutil only.
"""
from __future__ import annotations

from runtime.errors import UserError
from runtime.jobs import logfile

#: The exit code and the words with which a process stops itself for want of its master.
ORPHAN_EXIT = 3
ORPHAN_WORDS = "singa: no word from the job master"

RUNNING = "running"   # its process group still lives on this host
STOPPED = "stopped"   # it has exited, saying it stopped for want of its master
UNKNOWN = "unknown"   # on another host, or it ended in a way nobody saw


def fate(host: str | None, pgid: int | None, start_time: float | None,
         log_path: str | None) -> str:
    """RUNNING, STOPPED or UNKNOWN for the process launched as group `pgid` at
    `start_time` on `host`, whose log is `log_path` (see the constants)."""
    if not (pgid and host):
        return UNKNOWN
    from runtime.jobs import pgroup
    from runtime.jobs.hostfile import is_local

    if not is_local(host):
        return UNKNOWN
    if pgroup.members(pgid, start_time):
        return RUNNING
    if log_path and _last_line(log_path).startswith(ORPHAN_WORDS):
        return STOPPED
    return UNKNOWN


def _last_line(path: str) -> str:
    """The last non-blank line of the log at `path` ("" if there is none)."""
    try:
        lines = [s for s in (line.strip() for line in logfile.tail(path, 5)) if s]
    except UserError:  # a missing or unreadable log says nothing
        return ""
    return lines[-1] if lines else ""
