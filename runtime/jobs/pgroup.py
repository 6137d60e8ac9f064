"""Process groups of a job, found by (pid, start time), never by name.

Every runtime process leads its own session, so its pid is its process
group id and one signal to the group reaches it and anything it started.
Before signalling, the start time recorded at launch is checked against the
live process, so a recycled pid (a stranger's process) is never hit
(peers.md 3.2).

Used in-process by the job master and the CLI for local processes, and on
remote hosts through ssh:

    python -m runtime.jobs.pgroup signal PGID START_TIME SIGNAME
    python -m runtime.jobs.pgroup alive PID START_TIME

(exit 0: signalled / alive; 1: no such process group / not alive).
"""
from __future__ import annotations

import os
import signal
import sys

import psutil

# create_time is read from /proc with clock-tick resolution
_SLACK_S = 0.05


def start_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def alive(pid: int | None, started: float | None, *, slack: float = _SLACK_S,
          denied: bool = False) -> bool:
    """Whether the process `pid` that started at `started` (within `slack`
    seconds; None: any) still runs, not a zombie. A process we may not look
    at reads as `denied` (the registry passes True: it does not guess LOST)."""
    if not pid:
        return False
    try:
        p = psutil.Process(pid)
        if started is not None and abs(p.create_time() - started) > slack:
            return False
        return bool(p.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return denied


def members(pgid: int, started: float | None) -> list[int]:
    """Live pids of process group `pgid` that belong to the launch at
    `started` (none started before it: those would be a recycled group)."""
    out: list[int] = []
    for p in psutil.process_iter(["pid", "create_time", "status"]):
        try:
            if os.getpgid(p.info["pid"]) != pgid or p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
        except (ProcessLookupError, PermissionError):
            continue
        if started is not None and p.info["create_time"] + _SLACK_S < started:
            continue
        out.append(p.info["pid"])
    return out


def signal_group(pgid: int | None, started: float | None, sig: int) -> bool:
    """Send `sig` to the group if it is still the one launched at `started`.
    Returns whether any process got it."""
    if not pgid or not members(pgid, started):
        return False
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "signal":
        sig = getattr(signal, argv[3]) if argv[3].startswith("SIG") else int(argv[3])
        return 0 if signal_group(int(argv[1]), float(argv[2]), sig) else 1
    if len(argv) == 3 and argv[0] == "alive":
        return 0 if members(int(argv[1]), float(argv[2])) else 1
    print(__doc__.split("\n\n")[2], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
