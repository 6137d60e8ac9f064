"""Hosts a job runs on: hostfiles, `--hosts`, Slurm node lists, placement,
and which address this host shows to its peers.

Accepted hostfile dialects, mixed freely in one file, so that a file copied
from a peer system works as is (reference peers.md §2.12):

    node1                  # SINGA / MXNet: one host a line
    node2 slots=4          # MPI / Horovod / DeepSpeed
    node3:2                # Horovod's inline `-H host:N`, one a line
    [fd00::5] slots=2      # IPv6 (brackets optional with `slots=`)
    node4 slots=8 mem=32G  # singa: the memory jobs may use there

`#` starts a comment (whole line or trailing); blank lines are skipped.
Slots default to 1: this is the `--host h:N` convention of mpirun and
Horovod, not the MPI hostfile's "one per core", because the hostfile is
read on the submitting machine, which cannot know the cores of the others,
and because one SINGA process already runs several worker threads.
A slot is a core: the cluster manager (`runtime.jobs.resources`) admits a
job when its processes' BLAS threads fit in the slots of every host it
spans, and its estimated memory in `mem=` (this host: its own memory;
another host without `mem=`: not accounted). Any key other than `slots`
and `mem` is an error (a silently ignored `max_slots=` would give a
placement the user did not ask for).

What this module is not: it does not start anything (see `ssh.py` and the
launchers) and it does not read ranks from the environment (`envrank.py`).
"""
from __future__ import annotations

import functools
import ipaddress
import itertools
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from runtime.errors import UserError

# A host name or address: letters, digits and `-._:%` (IPv6 and its scope),
# not starting with `-` (it would read as an ssh option). Anything else (a
# space, `@`, a shell character) is a typo or an injection, never a host.
_NAME = re.compile(r"^[A-Za-z0-9_.:%][A-Za-z0-9_.:%-]*$")
_SLOTS_HELP = "a positive integer, as in 'node1 slots=2'"


@dataclass(frozen=True)
class Host:
    """One host and how many of the job's processes it may run.

    `where` says where it was given: "hosts.txt:3", "--hosts" or "slurm".
    """

    name: str
    slots: int
    where: str
    #: bytes of memory jobs may use on it (`mem=16G`); None: this host's own
    #: memory when it is this host, else not accounted
    mem: int | None = None

    def __str__(self) -> str:
        return f"{self.name}:{self.slots}"


# --------------------------------------------------------------- parsing ---
def _check_name(name: str, where: str) -> str | None:
    """The problem with a host name, or None."""
    if not name:
        return f"{where}: empty host name; expected a host name or address"
    if "@" in name:
        return (f"{where}: '{name}': a user name does not belong in the host list; "
                "give it with --ssh-user (or a `User` line in the ssh config)")
    if not _NAME.match(name):
        return (f"{where}: '{name}' is not a host name or address (letters, digits, "
                "'-', '.', '_' and ':' only; no leading '-')")
    return None


def _slots(text: str, where: str, name: str) -> int:
    if not re.fullmatch(r"\d+", text) or int(text) < 1:
        raise UserError(f"{where}: host '{name}': slots must be {_SLOTS_HELP}, got '{text}'")
    return int(text)


_MEM_UNITS = {"": 2**20, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_MEM_HELP = "a size such as 512M, 16G or 1T (binary units; a bare number is MiB, as in Slurm)"


def parse_mem(text: str, where: str, name: str) -> int:
    """Bytes of `mem=TEXT` ("16G", "512M", "1.5T", "4096" MiB)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgtKMGT]?)(?:i?[bB])?", text.strip())
    if not m or float(m.group(1)) <= 0:
        raise UserError(f"{where}: host '{name}': mem must be {_MEM_HELP}, got '{text}'")
    return int(float(m.group(1)) * _MEM_UNITS[m.group(2).lower()])


def _split_item(item: str, where: str, *, bare_ipv6: bool) -> tuple[str, str | None]:
    """`host`, `host:N`, `[v6]`, `[v6]:N` (and, when `bare_ipv6`, `fd00::1`)
    -> (name, slots text or None)."""
    if item.startswith("["):
        m = re.fullmatch(r"\[([^\]]*)\](?::(.*))?", item)
        if not m:
            raise UserError(f"{where}: '{item}': expected '[IPv6]' or '[IPv6]:SLOTS'")
        return m.group(1), m.group(2)
    if item.count(":") == 1:
        name, _, n = item.partition(":")
        return name, n
    if item.count(":") > 1 and not bare_ipv6:
        raise UserError(f"{where}: '{item}': put an IPv6 address in brackets, "
                        f"e.g. '[{item}]' or '[{item}]:2'")
    return item, None


def _host(item: str, slots: str | None, where: str) -> Host:
    problem = _check_name(item, where)
    if problem:
        raise UserError(problem)
    return Host(item, 1 if slots is None else _slots(slots, where, item), where)


def _parse_line(text: str, where: str) -> Host:
    # `slots = 4` is read as `slots=4`: some generated files space it out
    tokens = re.sub(r"\s*=\s*", "=", text).split()
    if "=" in tokens[0]:
        raise UserError(f"{where}: '{tokens[0]}' where a host name was expected; "
                        "expected 'HOST' or 'HOST slots=N'")
    name, slots = _split_item(tokens[0], where, bare_ipv6=True)
    mem = None
    for tok in tokens[1:]:
        key, eq, value = tok.partition("=")
        if not eq:
            raise UserError(f"{where}: unexpected '{tok}' after host '{name}'; "
                            "expected 'HOST' or 'HOST slots=N' (one host a line)")
        if key == "mem":
            if mem is not None:
                raise UserError(f"{where}: host '{name}' gives its mem twice")
            mem = parse_mem(value, where, name)
            continue
        if key != "slots":
            raise UserError(f"{where}: unknown key '{key}' for host '{name}'; "
                            "the keys are 'slots' and 'mem' (e.g. 'node1 slots=2 mem=16G')")
        if slots is not None:
            raise UserError(f"{where}: host '{name}' gives its slots twice; "
                            "give them once, as 'HOST slots=N' or 'HOST:N'")
        slots = value
    host = _host(name, slots, where)
    return host if mem is None else Host(host.name, host.slots, host.where, mem)


def _duplicates(hosts: list[Host]) -> list[tuple[Host, Host]]:
    """(repeat, first listing) for each host listed again; names compare
    case-insensitively, as DNS does."""
    seen: dict[str, Host] = {}
    out = []
    for h in hosts:
        first = seen.setdefault(h.name.lower(), h)
        if first is not h:
            out.append((h, first))
    return out


def parse_hostfile(path: str) -> list[Host]:
    """The hosts of a hostfile, in file order.

    Raises UserError for a missing, unreadable or empty file, and with every
    bad line at once (`PATH:LINE: what; expected ...`), duplicates naming both
    lines.
    """
    if not os.path.exists(path):
        raise UserError(f"{path}: no such hostfile (looked in {os.path.abspath(path)})")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, expected a hostfile (one host a line)")
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a text hostfile (byte {e.start} is not UTF-8)") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the hostfile ({e.strerror or e})") from None
    hosts: list[Host] = []
    problems: list[tuple[int, str]] = []
    for no, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            hosts.append(_parse_line(text, f"{path}:{no}"))
        except UserError as e:
            problems.append((no, str(e)))
    for again, first in _duplicates(hosts):
        no = int(again.where.rsplit(":", 1)[1])
        problems.append((no, f"{again.where}: duplicate host '{again.name}' (already listed "
                             f"at {first.where}); list each host once and give it slots=N"))
    if problems:
        raise UserError("\n".join(msg for _, msg in sorted(problems)))
    if not hosts:
        raise UserError(f"{path}: no hosts (only comments and blank lines); expected one "
                        "host a line, as 'node1' or 'node1 slots=2'")
    return hosts


def parse_hosts(spec: str) -> list[Host]:
    """The hosts of `--hosts h1:2,h2:2,h3,[::1]:2` (slots default to 1)."""
    items = [s.strip() for s in spec.split(",")]
    if not spec.strip() or not all(items):
        raise UserError(f"--hosts: '{spec}' has an empty entry; expected "
                        "HOST[:SLOTS],... e.g. 'node1:2,node2:2'")
    hosts = [_host(*_split_item(item, "--hosts", bare_ipv6=False), "--hosts")
             for item in items]
    dups = list(dict.fromkeys(again.name for again, _ in _duplicates(hosts)))
    if dups:
        raise UserError(f"--hosts: {', '.join(repr(d) for d in dups)} listed more than "
                        "once; list each host once and give it its slots as HOST:N")
    return hosts


# ------------------------------------------------------------- placement ---
def _slot_summary(hosts: list[Host], limit: int = 8) -> str:
    parts = [f"{h.name}: {h.slots}" for h in hosts[:limit]]
    if len(hosts) > limit:
        parts.append(f"and {len(hosts) - limit} more")
    return ", ".join(parts)


def place(hosts: list[Host], nprocs: int, *, oversubscribe: bool = False,
          what: str = "") -> list[str]:
    """The host of each process id 0..nprocs-1.

    Hosts are filled in order up to their slots (mpirun's `--map-by slot`),
    so consecutive processes (a worker group's) share a host. With too few
    slots this is a UserError unless `oversubscribe`, in which case the
    extra processes go round-robin over the hosts. `what` says where the
    process count comes from, for the message.
    """
    if nprocs < 0:
        raise ValueError(f"nprocs must be >= 0, got {nprocs}")
    if not hosts:
        raise UserError("no hosts to place the job's processes on; give a hostfile or --hosts")
    out = [h.name for h in hosts for _ in range(h.slots)][:nprocs]
    missing = nprocs - len(out)
    if missing > 0:
        if not oversubscribe:
            total = sum(h.slots for h in hosts)
            src = f" ({what})" if what else ""
            raise UserError(
                f"the job needs {nprocs} process{'es' if nprocs != 1 else ''}{src} but the "
                f"hosts have {total} slot{'s' if total != 1 else ''} ({_slot_summary(hosts)}); "
                "add hosts or slots, or pass --oversubscribe")
        out += [hosts[i % len(hosts)].name for i in range(missing)]
    return out


# ------------------------------------------------------- this machine ---
def _strip(host: str) -> str:
    """`[fd00::1]` -> `fd00::1`; `fe80::1%eth0` -> `fe80::1`; lower case."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.split("%", 1)[0]


@functools.lru_cache(maxsize=1)
def _local_identity() -> tuple[frozenset[str], frozenset[str]]:
    """(names, addresses) of this machine; computed once (getfqdn may ask DNS)."""
    import psutil  # only hosts that check locality need it

    names = {"localhost", "localhost.localdomain", "ip6-localhost"}
    for n in (socket.gethostname(), socket.getfqdn()):
        if n:
            names.add(n.lower())
    addrs = set()
    for entries in psutil.net_if_addrs().values():
        for a in entries:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                addrs.add(_strip(a.address))
    return frozenset(names), frozenset(addrs)


def is_local(host: str) -> bool:
    """Whether `host` names this machine: localhost, a loopback address, this
    machine's host name or FQDN, or an address of one of its interfaces.

    Names are not resolved (a DNS alias of this machine counts as remote and is
    reached over ssh, which still works); the answer is cached per process.
    """
    h = _strip(host)
    names, addrs = _local_identity()
    if h in names or h.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return False
    return ip.is_loopback or str(ip) in addrs


def _interfaces() -> dict[str, list[str]]:
    import psutil

    return {name: [a.address for a in entries if a.family == socket.AF_INET]
            for name, entries in sorted(psutil.net_if_addrs().items())}


def advertise_address(peer: str | None = None, interface: str | None = None, *,
                      environ: Mapping[str, str] | None = None) -> str:
    """The IP address this host gives the job's other processes to reach it.

    - `interface` (else `$SINGA_INTERFACE`) names a network interface: its
      IPv4 address (an unknown interface, or one without IPv4, is a
      UserError listing the interfaces and their addresses);
    - else, with `peer`: the local address the kernel routes to `peer`
      (a UDP socket is connected, which sends no packet);
    - else 127.0.0.1 (a single-host job).
    """
    env = os.environ if environ is None else environ
    interface = interface or env.get("SINGA_INTERFACE") or None
    if interface:
        known = _interfaces()
        listing = ", ".join(f"{n} ({', '.join(a) or 'no IPv4'})" for n, a in known.items())
        if interface not in known:
            raise UserError(f"network interface '{interface}' does not exist on "
                            f"{socket.gethostname()}; its interfaces are: {listing}")
        if not known[interface]:
            raise UserError(f"network interface '{interface}' has no IPv4 address; "
                            f"interfaces: {listing}")
        return known[interface][0]
    if peer is None:
        return "127.0.0.1"
    try:
        family, _, _, _, addr = socket.getaddrinfo(_strip(peer), 9, type=socket.SOCK_DGRAM)[0]
    except socket.gaierror as e:
        raise UserError(f"cannot resolve host '{peer}' to find the address to advertise to "
                        f"it ({e.strerror}); check the host name, or choose the address with "
                        "--interface / SINGA_INTERFACE") from None
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect(addr)
        except OSError as e:
            raise UserError(f"no route from {socket.gethostname()} to '{peer}' ({addr[0]}): "
                            f"{e.strerror or e}; choose the interface with --interface / "
                            "SINGA_INTERFACE") from None
        return _strip(s.getsockname()[0])


# ------------------------------------------------------------------ slurm ---
def _split_top(text: str, var: str) -> list[str]:
    """Split at commas outside brackets: `a[1,2],b` -> [`a[1,2]`, `b`]."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if depth < 0 or depth > 1:
            raise UserError(f"{var}: unbalanced brackets in '{text}'")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise UserError(f"{var}: unbalanced brackets in '{text}'")
    parts.append("".join(cur))
    return parts


def _expand_range(body: str, var: str) -> list[str]:
    """`10,20-22` -> [10, 20, 21, 22]; `001-003` keeps the width of the start."""
    out = []
    for r in body.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", r.strip())
        if not m:
            raise UserError(f"{var}: '[{body}]' is not a list of numbers and ranges "
                            "like [1,3-5]")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise UserError(f"{var}: range '{r}' goes down; expected LOW-HIGH")
        width = len(lo)
        out += [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    return out


def expand_nodelist(text: str, var: str = "SLURM_JOB_NODELIST") -> list[str]:
    """Slurm's compressed host list -> host names, as `scontrol show hostnames`:
    `gnode[10,20-22],login01,n[001-003]` -> gnode10, gnode20..22, login01,
    n001..n003. Several bracket groups in one name expand as a product."""
    hosts: list[str] = []
    for item in _split_top(text.strip(), var):
        if not item:
            raise UserError(f"{var}: empty entry in '{text}'")
        pieces = re.split(r"\[([^\]]*)\]", item)  # literal, range, literal, range, ...
        choices = [[p] if i % 2 == 0 else _expand_range(p, var) for i, p in enumerate(pieces)]
        hosts += ["".join(c) for c in itertools.product(*choices)]
    return hosts


def expand_tasks_per_node(text: str, var: str = "SLURM_TASKS_PER_NODE") -> list[int]:
    """`2(x3),1` -> [2, 2, 2, 1]."""
    out: list[int] = []
    for item in text.strip().split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if not m:
            raise UserError(f"{var}: '{item}' in '{text}' is not N or N(xK)")
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def slurm_hosts(environ: Mapping[str, str]) -> list[Host]:
    """The hosts of the current Slurm allocation (or job step, when
    `SLURM_STEP_NODELIST` is set: concurrent steps get their own nodes), with
    their task counts as slots."""
    if environ.get("SLURM_STEP_NODELIST"):
        node_var = "SLURM_STEP_NODELIST"
        task_vars: tuple[str, ...] = ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
    else:
        node_var = "SLURM_JOB_NODELIST"
        task_vars = ("SLURM_TASKS_PER_NODE",)
    if not environ.get(node_var):
        raise UserError(f"{node_var} is not set: not inside a Slurm allocation (run under "
                        "sbatch/salloc, or give a hostfile or --hosts)")
    task_var = next((v for v in task_vars if environ.get(v)), None)
    if task_var is None:
        raise UserError(f"{task_vars[-1]} is not set, so the slots of the Slurm nodes are "
                        f"unknown ({node_var}={environ[node_var]})")
    names = expand_nodelist(environ[node_var], node_var)
    slots = expand_tasks_per_node(environ[task_var], task_var)
    if len(slots) != len(names):
        raise UserError(f"{task_var}={environ[task_var]} gives {len(slots)} task counts but "
                        f"{node_var}={environ[node_var]} has {len(names)} nodes")
    bad = [n for n in names if _check_name(n, node_var)]
    if bad:
        raise UserError(str(_check_name(bad[0], node_var)))
    return [Host(n, s, "slurm") for n, s in zip(names, slots) if s > 0]
