"""How the `singa` commands write times, durations, sizes, hosts and tables
(list, view, top and the submit follower share them, so a duration reads the
same everywhere).

Standard library only: `singa list` is on a user's hot path (`watch singa
list`) and imports this module (see tests/cli/test_jobs_cli.py).
"""
from __future__ import annotations

import time
from collections.abc import Sequence

HOSTS_WIDTH = 28


def ts(t: float | None) -> str:
    """A local date and time, `2026-01-31 12:00:00`; `-` for none."""
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def dur(seconds: float | None, missing: str = "-") -> str:
    """A duration as `H:MM:SS` (whole seconds); `missing` for none."""
    if seconds is None:
        return missing
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def ago(t: float | None, now: float) -> str:
    """How long before `now` the time `t` was: `4.2s ago`, `3m05s ago`, `2h01m ago`."""
    if t is None:
        return "-"
    d = max(0.0, now - t)
    if d < 60:
        return f"{d:.1f}s ago"
    if d < 3600:
        return f"{int(d) // 60}m{int(d) % 60:02d}s ago"
    return f"{int(d) // 3600}h{int(d) // 60 % 60:02d}m ago"


def rate(x: float | None, digits: int = 2) -> str:
    """A rate with `digits` decimals; `-` for none."""
    return "-" if x is None else f"{x:.{digits}f}"


def mem(b: int) -> str:
    """A size in bytes as MiB, or as GiB from 10 GiB up."""
    return f"{b / 2**20:.0f} MiB" if b < 10 * 2**30 else f"{b / 2**30:.1f} GiB"


def step(n: int | None, total: int | None) -> str:
    """`n/total`, or `n` alone when the total is not known."""
    s = "-" if n is None else str(n)
    return s if not total else f"{s}/{total}"


def short_host(h: str) -> str:
    """`node1.cluster.example.org` -> `node1`; IP addresses stay whole."""
    if h.replace(".", "").isdigit() or ":" in h:
        return h
    return h.split(".", 1)[0]


def hosts(names: Sequence[str], width: int = HOSTS_WIDTH) -> str:
    """Distinct short host names in order, comma-joined; `+N` for those that do not fit."""
    short = list(dict.fromkeys(short_host(h) for h in names if h))
    if not short:
        return "-"
    out, shown = short[0], 1
    for n in short[1:]:
        rest = len(short) - shown - 1  # names left out if this one is added
        if len(out) + 1 + len(n) + (len(f" +{rest}") if rest else 0) > width:
            break
        out += "," + n
        shown += 1
    rest = len(short) - shown
    return out + (f" +{rest}" if rest else "")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, the header first; no trailing blanks."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()
                     for r in [header, *rows])


def counts(states: Sequence[str], order: Sequence[str]) -> str:
    """"2 RUNNING, 4 QUEUED": how many of `states` are in each state, in `order`."""
    return ", ".join(f"{states.count(s)} {s}" for s in order if s in states)


def is_local(host: str | None) -> bool:
    """True if `host` names this machine (as the launcher wrote it in the hostfile);
    no host means this machine."""
    from runtime.jobs.hostfile import is_local as _local  # only when a log is to be read

    return not host or _local(host)
