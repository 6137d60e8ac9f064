"""`singa hosts`: the cluster's hosts with what is allocated on them; and
`singa hosts check`, a dry run of the hosts a job would use, before launching it.

    singa hosts [--json]

One line per host: the default cluster (`$SINGA_HOME/hosts`, else this
host) and every other host an active job holds or asks for; its slots
(cores) and memory, what the admitted jobs (PENDING, RUNNING) hold there,
and which jobs those are, the queued ones that ask for it too:

    HOST       SLOTS  USED  MEMORY    USED MEM  JOBS
    localhost  2      1     23.4 GiB  91 MiB    7 (conv, 1 core), 9 (queued: 2 cores)

It reads the registry only (active jobs are reconciled first, as `singa
list` does), so it is as light as `singa list`: no numpy, protobuf or zmq.

    singa hosts check hosts.txt [--conf job.conf]
    singa hosts check --hosts node1:2,node2:2 --ssh-port 2222

Parses the hostfile (or `--hosts`, or the Slurm allocation when neither is
given), resolves each host, runs `true` on every host over ssh in parallel
(this machine needs no ssh) and prints one line per host:

    HOST       SLOTS  ADDRESS    STATUS
    localhost  2      127.0.0.1  local
    node2      2      10.0.0.2   connection refused by node2 (10.0.0.2) on port 22: ...

With `--conf`, it also checks that the slots hold the job's processes.
Exit 0 when every host is reachable (and the slots suffice), 1 when not, 2
for a bad hostfile, option or job.conf (the message names file:line).
"""
from __future__ import annotations

import os
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import click

from runtime.errors import UserError
from runtime.jobs.hostfile import Host, parse_hostfile, parse_hosts, place, slurm_hosts
from runtime.jobs.ssh import SshOptions, probe

if TYPE_CHECKING:
    from runtime.jobs.resources import HostUsage


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "as_json", is_flag=True, help="Print the hosts as a JSON list.")
@click.pass_context
def hosts(ctx: click.Context, as_json: bool) -> None:
    """Show the cluster's hosts: slots, memory, and what jobs hold there.

    With no command: one line per host of the default cluster
    ($SINGA_HOME/hosts, else this host) and of every active job, with its
    slots (cores) and memory, what the running jobs hold there, and the
    queued jobs that wait for it. `singa hosts check` probes a hostfile.

    \b
    Hostfile lines (dialects may be mixed; '#' starts a comment):
      node1            one slot (the `--host` convention)
      node2 slots=4    MPI / Horovod / DeepSpeed style
      node3:2          Horovod's inline style
      node4 slots=8 mem=32G   with the memory jobs may use there
    """
    if ctx.invoked_subcommand is not None:
        return
    try:
        show(as_json)
    except UserError as e:
        # the `singa` group does this too; repeated so `hosts` also works on its own
        click.echo(str(e) if "\n" in str(e) else f"singa: {e}", err=True)
        sys.exit(2)


def show(as_json: bool) -> None:
    """Print the hosts and their allocation (`runtime.jobs.resources.usage`)."""
    import json

    from runtime.jobs import jobdb, resources

    with jobdb.JobDB() as reg:
        for j in reg.jobs(jobdb.ACTIVE):
            reg.reconcile(j)  # a job whose master is gone holds nothing
        active = reg.jobs(jobdb.ACTIVE)
        cluster = resources.capacity(resources.default_hosts(reg.home))
    rows = resources.usage(cluster, active)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    click.echo(render(rows))


def render(rows: list[HostUsage]) -> str:
    """The table of `singa hosts` for `resources.usage` rows, and a line on the
    queue when jobs wait."""
    from singa_cli import fmt

    table = [[r.host, "-" if r.cores is None else str(r.cores), str(r.used_cores),
              "-" if r.mem is None else fmt.mem(r.mem), fmt.mem(r.used_mem),
              ", ".join([f"{j['id']} ({j['name']}, {_cores(j['cores'])})" for j in r.jobs]
                        + [f"{j['id']} (queued: {_cores(j['cores'])})" for j in r.waiting])
              or "-"]
             for r in rows]
    out = fmt.table(["HOST", "SLOTS", "USED", "MEMORY", "USED MEM", "JOBS"], table)
    queued = sorted({j["id"] for r in rows for j in r.waiting})
    if queued:
        out += (f"\n{len(queued)} job{'s' if len(queued) != 1 else ''} queued; "
                "'singa list --state QUEUED' says what each waits for")
    return out


def _cores(n: int) -> str:
    return f"{n} core{'s' if n != 1 else ''}"


@hosts.command()
@click.argument("hostfile", required=False, metavar="[HOSTFILE]")
@click.option("--hosts", "spec", metavar="SPEC",
              help="Hosts inline instead of a hostfile: h1:2,h2:2,h3 (slots default to 1).")
@click.option("--ssh-port", type=int, metavar="N", help="sshd port on the hosts [ssh's default].")
@click.option("--ssh-identity", metavar="FILE", help="Private key to log in with.")
@click.option("--ssh-config", metavar="FILE",
              help="ssh config file to use instead of ~/.ssh/config.")
@click.option("--ssh-user", metavar="USER", help="User to log in as [ssh's default].")
@click.option("--ssh-accept-new", is_flag=True,
              help="Record the host key of a host not yet in known_hosts (a changed key "
                   "is still refused).")
@click.option("--timeout", type=float, default=10.0, show_default=True, metavar="S",
              help="Seconds to wait for each host.")
@click.option("--conf", metavar="JOB.conf",
              help="Also check that the hosts have slots for this job's processes.")
@click.option("--oversubscribe", is_flag=True,
              help="Allow more processes than slots (with --conf).")
def check(hostfile: str | None, spec: str | None, ssh_port: int | None,
          ssh_identity: str | None, ssh_config: str | None, ssh_user: str | None,
          ssh_accept_new: bool, timeout: float, conf: str | None, oversubscribe: bool) -> None:
    """Parse, resolve and ssh-probe the hosts; with --conf, count slots against the job."""
    try:
        host_list = _hosts(hostfile, spec)
        if timeout <= 0:
            raise UserError(f"--timeout {timeout:g}: expected seconds > 0")
        opts = SshOptions(port=ssh_port, identity=ssh_identity, config=ssh_config,
                          user=ssh_user, connect_timeout=timeout,
                          strict_host_keys=not ssh_accept_new)
        opts.check()
        nprocs, what = _job_procs(conf) if conf else (None, "")
    except UserError as e:
        # the `singa` group does this too; repeated so `hosts` also works on its own
        click.echo(str(e) if "\n" in str(e) else f"singa: {e}", err=True)
        sys.exit(2)

    # ssh gets a little longer than its own ConnectTimeout, so that its more
    # precise message usually wins over "no answer"
    with ThreadPoolExecutor(max_workers=max(1, min(32, len(host_list)))) as pool:
        rows = list(pool.map(lambda h: _examine(h, opts, timeout + 2), host_list))
    _print_table(rows)
    bad = sum(1 for _, _, ok, _ in rows if not ok)
    slots = sum(h.slots for h in host_list)
    click.echo(f"{len(host_list)} host{'s' if len(host_list) != 1 else ''}, {slots} slot"
               f"{'s' if slots != 1 else ''}: "
               + ("all reachable" if not bad else f"{bad} not reachable"))
    placed_ok = True
    if nprocs is not None:
        try:
            placement = place(host_list, nprocs, oversubscribe=oversubscribe, what=what)
            click.echo(f"{conf}: {nprocs} process{'es' if nprocs != 1 else ''} -> "
                       + _describe_placement(placement))
        except UserError as e:
            click.echo(f"{conf}: {e}")
            placed_ok = False
    sys.exit(0 if not bad and placed_ok else 1)


def _hosts(hostfile: str | None, spec: str | None) -> list[Host]:
    if hostfile and spec:
        raise UserError(f"give either a HOSTFILE ({hostfile}) or --hosts ({spec}), not both")
    if hostfile:
        return parse_hostfile(hostfile)
    if spec is not None:
        return parse_hosts(spec)
    if os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_STEP_NODELIST"):
        return slurm_hosts(os.environ)
    raise UserError("no hosts given: expected a HOSTFILE argument or --hosts h1:2,h2:2 "
                    "(or run inside a Slurm allocation)")


def _job_procs(conf: str) -> tuple[int, str]:
    """(number of processes, where that number comes from) of the job.conf."""
    from runtime.cluster import Cluster  # keep the plain check fast
    from runtime.config import load_job

    job = load_job(conf)
    c = Cluster.from_proto(job.proto.cluster)
    layout = (f"{c.nworker_procs} worker + {c.nserver_procs} server processes"
              if c.server_worker_separate else
              f"{c.nworkers} worker{'s' if c.nworkers != 1 else ''} / "
              f"{c.nworkers_per_procs} per process")
    return c.nprocs, layout


def _resolve(name: str) -> str:
    """The host's first address (IPv4 first), or "-" when it does not resolve."""
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return "-"
    infos.sort(key=lambda i: i[0] != socket.AF_INET)
    return str(infos[0][4][0]) if infos else "-"


def _examine(h: Host, opts: SshOptions, timeout: float) -> tuple[Host, str, bool, str]:
    # a name DNS does not know may still be an alias in the ssh config, so ssh
    # is asked in any case and its answer is the status
    address = _resolve(h.name)
    ok, status = probe(h.name, opts, timeout)
    return h, address, ok, status


def _print_table(rows: list[tuple[Host, str, bool, str]]) -> None:
    table = [("HOST", "SLOTS", "ADDRESS", "STATUS")]
    table += [(h.name, str(h.slots), addr, status) for h, addr, _, status in rows]
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    for r in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[3])


def _describe_placement(placement: list[str]) -> str:
    """["a", "a", "b"] -> "a: 0-1, b: 2" (process ids per host, in host order)."""
    ids: dict[str, list[int]] = {}
    for pid, host in enumerate(placement):
        ids.setdefault(host, []).append(pid)
    return ", ".join(f"{host}: {_ranges(p)}" for host, p in ids.items())


def _ranges(nums: list[int]) -> str:
    runs: list[list[int]] = []
    for n in nums:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)
