"""`--launcher slurm`: a job's processes as the tasks of a Slurm job.

Two ways in, chosen by the environment of `singa submit`:

- **From a login node** (no `SLURM_JOB_ID`): a batch script is submitted
  with `sbatch`; its one line runs the processes with `srun`. sbatch gets
  the job's layout: `--ntasks` (the job's processes), `--cpus-per-task`
  (the cores each asks: `--cores`, else the conf's num_openblas_threads,
  else 1; its BLAS threads are that many), `--nodes` (the fewest nodes of
  the partition that hold them, unless the user asked for a number) and
  `--ntasks-per-node`. The Slurm job id is the job's `external_id`.
- **Inside an allocation** (`SLURM_JOB_ID` set: under salloc, or an sbatch
  script that runs `singa submit`): the processes are one `srun` step of
  that allocation, started by the job master, with no new sbatch. The
  `external_id` is the step, `ALLOC.STEP`, so `singa kill` cancels the
  step and never the user's allocation.

`--slurm-opt '--partition=debug --time=10'` is split like a shell line and
given to sbatch (or to srun inside an allocation) after singa's own
options, so the user's win. At submit, `sbatch --test-only` checks them
with the job's layout: a bad option or an impossible request is sbatch's
own message, exit 2, before anything exists.

Each process takes its rank from `SLURM_PROCID` (`runtime.jobs.envrank`)
and names its node by `SLURMD_NODENAME` in its kConnect, so the registry's
process rows carry the node names. The master listens on an address the
nodes can reach (`advertise`), always with CurveZMQ: a Slurm job is remote.

States, in singa's terms (`SlurmEngine.poll`/`waiting`): a job pending in
Slurm's queue is QUEUED with Slurm's reason ("Slurm: Resources"); a task
that dies is named with its node from srun's own line (`srun: error: node2:
task 1: Killed`); a time limit is "Slurm time limit (10 min) reached"; any
other end of the Slurm job says its state and exit.
"""
from __future__ import annotations

import math
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.errors import UserError
from runtime.jobs.launcher import (
    Engine,
    EngineHandle,
    EngineLauncher,
    Handle,
    JobFiles,
    Launcher,
    ProcSpec,
    _engine_argv,
    _open_log,
    launcher_registry,
)

if TYPE_CHECKING:
    from runtime.jobs.jobdb import Job

#: Seconds between two looks at Slurm's state of a job (squeue/scontrol).
POLL_S = 1.0
#: Slurm's job states after which nothing of the job runs any more.
ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                   "PREEMPTED", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"})
#: sbatch --test-only's words for a job the nodes cannot run now (or ever).
NOT_NOW = "Requested node configuration is not available"
#: srun's words for a signal (strsignal) -> the signal.
_SIGNAL_WORDS = {signal.strsignal(s) or s.name: int(s) for s in signal.Signals}
_TASK_LINE = re.compile(r"^srun: error: (?P<node>\S+): tasks? (?P<tasks>[\d,\-]+): (?P<what>.+)$",
                        re.M)
_STEP_WAIT = re.compile(r"step creation temporarily disabled, retrying \((?P<why>[^)]*)\)")


def _run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(argv, 255, "", f"{argv[0]}: {e}")


# --------------------------------------------------------------- options ---
def split_opts(text: str | None) -> list[str]:
    """`--slurm-opt` as words, split like a shell line; bad quoting is a UserError."""
    if not text:
        return []
    try:
        return shlex.split(text)
    except ValueError as e:
        raise UserError(f"--slurm-opt {text!r}: {e}; expected sbatch options as on a command "
                        "line, e.g. --slurm-opt '--partition=debug --time=10'") from None


def allocation(environ: Mapping[str, str] = os.environ) -> str | None:
    """The id of the Slurm allocation `singa submit` runs in (salloc, an sbatch
    script), or None on a login node."""
    return environ.get("SLURM_JOB_ID", "").strip() or None


def _opt_value(opts: list[str], long: str, short: str | None = None) -> str | None:
    """The value the user gave an option (`--nodes=2`, `--nodes 2`, `-N2`, `-N 2`), last wins."""
    found = None
    for i, o in enumerate(opts):
        if o.startswith(long + "="):
            found = o[len(long) + 1:]
        elif o == long or (short and o == short):
            found = opts[i + 1] if i + 1 < len(opts) else None
        elif short and o.startswith(short) and len(o) > len(short):
            found = o[len(short):]
    return found


def node_cpus(partition: str | None) -> int | None:
    """The CPUs of the largest node of `partition` (the default one: None), by sinfo."""
    argv = ["sinfo", "-h", "-o", "%c"] + (["-p", partition] if partition else [])
    r = _run(argv)
    cpus = [int(t) for t in re.findall(r"\d+", r.stdout)] if r.returncode == 0 else []
    return max(cpus) if cpus else None


def layout(ntasks: int, threads: int, opts: list[str]) -> list[str]:
    """sbatch's layout options for `ntasks` processes of `threads` cores each:
    --nodes (the user's, else the fewest nodes of the partition that hold
    them), --ntasks, --ntasks-per-node, --cpus-per-task."""
    nodes_opt = _opt_value(opts, "--nodes", "-N")
    nodes = None
    if nodes_opt is not None:
        m = re.match(r"\d+", nodes_opt)
        nodes = int(m.group()) if m else None
    if nodes is None:
        cpus = node_cpus(_opt_value(opts, "--partition", "-p"))
        nodes = max(1, math.ceil(ntasks * threads / cpus)) if cpus else None
    out = [] if nodes_opt is not None or nodes is None else [f"--nodes={min(nodes, ntasks)}"]
    out += [f"--ntasks={ntasks}", f"--cpus-per-task={threads}"]
    if nodes:
        out.append(f"--ntasks-per-node={math.ceil(ntasks / max(1, min(nodes, ntasks)))}")
    return out


def check(ntasks: int, threads: int, opts: list[str],
          environ: Mapping[str, str] = os.environ) -> None:
    """At submit: a UserError (exit 2) with sbatch's own words when sbatch
    would refuse the job (`sbatch --test-only` with the layout and the
    user's options): a bad option, an unknown partition. Inside an
    allocation the options go to srun, which has no dry run: they are
    checked when the step starts."""
    if allocation(environ) is not None:
        return
    r = _run(["sbatch", "--test-only", *layout(ntasks, threads, opts), *opts, "--wrap", "true"])
    said = r.stderr.strip() or r.stdout.strip() or f"exit status {r.returncode}"
    # the nodes that could run it are not available now (DOWN, drained): a
    # real submission waits that out in Slurm's queue (QUEUED here); if
    # sbatch refuses it then, the job FAILS with sbatch's words
    if r.returncode != 0 and said != "allocation failure: " + NOT_NOW:
        given = f" with --slurm-opt {shlex.join(opts)!r}" if opts else ""
        raise UserError(f"sbatch refuses the job{given}: {said}")


# ------------------------------------------------------------- addresses ---
def node_addresses(nodes: str | None = None, partition: str | None = None) -> list[str]:
    """The addresses (NodeAddr) of the nodes in `nodes` (a Slurm node list) or
    of `partition` (the default one), in sinfo's order."""
    argv = ["sinfo", "-h", "-N", "-o", "%o"]
    if nodes:
        argv += ["-n", nodes]
    elif partition:
        argv += ["-p", partition]
    r = _run(argv)
    return list(dict.fromkeys(r.stdout.split())) if r.returncode == 0 else []


def advertise(interface: str | None, opts: list[str],
              environ: Mapping[str, str] = os.environ) -> str:
    """The address the job master gives the processes: the interface's when
    one is named (--interface, SINGA_INTERFACE); else the one this host
    routes to the job's nodes (the allocation's, else the partition's) on;
    when the nodes are all this host, its first address other than
    loopback (so a node is never told 127.0.0.1 by mistake of configuration)."""
    from runtime.jobs import hostfile

    if interface or environ.get("SINGA_INTERFACE"):
        return hostfile.advertise_address(interface=interface, environ=environ)
    nodes = environ.get("SLURM_JOB_NODELIST") if allocation(environ) else None
    addrs = node_addresses(nodes, _opt_value(opts, "--partition", "-p"))
    for a in addrs:
        if not hostfile.is_local(a):
            return hostfile.advertise_address(peer=a, environ=environ)
    for addrs_of in hostfile._interfaces().values():
        for a in addrs_of:
            if not a.startswith("127."):
                return a
    return "127.0.0.1"


# ---------------------------------------------------------------- states ---
def duration(limit: str) -> str:
    """Slurm's time limit text ("10:00", "1:30:00", "2-00:00:00") in words
    ("10 min", "1 h 30 min", "2 d"); anything else as given."""
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", limit.strip())
    if not m:
        return limit.strip()
    d, h, mi, s = (int(x) if x else 0 for x in m.groups())
    if m.group(2) is None and m.group(1) is not None:  # "D-HH:MM" has no seconds
        d, h, mi, s = d, mi, s, 0
    parts = [f"{v} {u}" for v, u in ((d, "d"), (h, "h"), (mi, "min"), (s, "s")) if v]
    return " ".join(parts) or "0 s"


def task_failures(text: str) -> list[tuple[str, list[int], str]]:
    """srun's lines on tasks that ended badly, in order: (node, tasks, what
    srun said: "Killed", "Exited with exit code 3", ...)."""
    out = []
    for m in _TASK_LINE.finditer(text):
        tasks: list[int] = []
        for part in m["tasks"].split(","):
            lo, _, hi = part.partition("-")
            if lo.isdigit():
                tasks += range(int(lo), int(hi or lo) + 1)
        out.append((m["node"], tasks, m["what"].strip()))
    return out


def task_status(what: str) -> int:
    """srun's words for a task's end as a status (negative: that signal)."""
    m = re.match(r"Exited with exit code (\d+)", what)
    if m:
        return int(m.group(1))
    return -_SIGNAL_WORDS.get(what, signal.SIGKILL) if what in _SIGNAL_WORDS else 1


def _tail(path: Path, limit: int = 65536) -> str:
    from runtime.jobs.logfile import tail_text

    return tail_text(path, limit)


class SlurmEngine(Engine):
    """One launch under Slurm: its state, its end and who ended it.

    `poll()` is None while the tasks may still run; the status of the task to
    blame once one has ended badly (`culprit`, `words`); else the launch's
    status once Slurm has ended it. `waiting()` is Slurm's reason while it
    keeps the job pending. Slurm is asked at most every `POLL_S`.
    """

    def __init__(self, out: Path):
        self.out = out              # where srun writes its lines on the tasks
        self._checked = 0.0
        self._code: int | None = None
        self.culprit: int | None = None  # the task that ended first and badly
        self.node: str | None = None     # its node
        self.words = ""                  # the end in words when no task is to blame
        self.reason: str | None = None   # Slurm's reason while pending
        self.reported = False            # the culprit has been polled (see SlurmHandle)

    def _due(self) -> bool:
        now = time.monotonic()
        if self._code is not None or now - self._checked < POLL_S:
            return False
        self._checked = now
        return True

    def _task_failed(self, limit: str = "") -> bool:
        """True once the launch has ended badly: Slurm's time limit (its
        tasks are then TERMinated, and none is to blame), or a task's death."""
        text = _tail(self.out)
        if _TIME_LIMIT.search(text):
            self.words = f"Slurm time limit ({duration(limit)}) reached" if limit \
                else "Slurm time limit reached"
            self._code = -signal.SIGTERM
            return True
        found = task_failures(text)
        if not found:
            return False
        self.node, tasks, what = found[0]
        self.culprit = tasks[0]
        self._code = task_status(what)
        return True

    def waiting(self) -> str | None:
        self.poll()
        return self.reason


class SlurmBatch(SlurmEngine):
    """A batch job submitted with sbatch: its state from squeue (scontrol for
    the exit code), srun's lines from the job's output file."""

    def __init__(self, slurm_id: str, out: Path):
        super().__init__(out)
        self.id = slurm_id
        self._closed = False

    def poll(self) -> int | None:
        if not self._due():
            return self._code
        q = _run(["squeue", "-h", "-t", "all", "-j", self.id, "-o", "%T|%r|%l"])
        state, _, rest = q.stdout.strip().partition("|")
        reason, _, limit = rest.partition("|")
        # "None": not looked at by Slurm's scheduler yet
        self.reason = (f"Slurm: {reason if reason not in ('', 'None') else 'pending'}"
                       if state == "PENDING" else None)
        if self._task_failed(limit):
            return self._code
        if q.returncode == 0 and state and state not in ENDED:
            return None
        show = _run(["scontrol", "show", "job", self.id]).stdout
        m = re.search(r"ExitCode=(\d+):(\d+)", show)
        code, sig = (int(m.group(1)), int(m.group(2))) if m else (1, 0)
        if not state:  # aged out of slurmctld: the last state scontrol knows, if any
            s = re.search(r"JobState=(\S+)", show)
            state = s.group(1) if s else "UNKNOWN"
        if state == "TIMEOUT":
            self.words = f"Slurm time limit ({duration(limit)}) reached"
        elif state != "COMPLETED" or code or sig:
            why = f" ({reason})" if reason and reason != "None" else ""
            self.words = f"Slurm job {self.id} ended {state}{why}, exit code {code}:{sig}"
        self._code = 0 if state == "COMPLETED" and not code and not sig else (-sig if sig else code or 1)
        return self._code

    def close(self) -> None:
        # whatever ended the attempt, nothing of it stays in Slurm (a no-op once it has ended)
        if not self._closed:
            self._closed = True
            _run(["scancel", self.id])

    def signal(self, sig: int) -> None:
        if sig == signal.SIGKILL:
            _run(["scancel", self.id])
        else:  # the tasks, and the batch script (srun passes it on)
            _run(["scancel", "--full", "--signal", signal.Signals(sig).name[3:], self.id])


class SlurmStep(SlurmEngine):
    """A step of the allocation singa runs in: an srun of the job master's."""

    def __init__(self, popen: subprocess.Popen[bytes], out: Path, step: str | None = None):
        super().__init__(out)
        self.popen = popen
        self.step = step  # ALLOC.STEP, when squeue showed it

    def poll(self) -> int | None:
        code = self.popen.poll()
        if not self._due():
            return self._code if self._code is not None else (None if code is None else code)
        text = _tail(self.out)
        waits = list(_STEP_WAIT.finditer(text))
        # srun says when it is still waiting for the allocation's resources, then "Step created"
        self.reason = (f"Slurm: {waits[-1]['why']}" if waits and code is None
                       and "Step created" not in text[waits[-1].end():] else None)
        if self._task_failed():
            return self._code
        if code is not None:
            self._code = code
            if code:
                self.words = f"srun exited with code {code}: {_last_srun_error(text)}".rstrip(": ")
        return self._code

    def signal(self, sig: int) -> None:
        from runtime.jobs import pgroup

        # srun leads its own session: TERM to it cancels the step's tasks
        pgroup.signal_group(self.popen.pid, pgroup.start_time(self.popen.pid), sig)

    def close(self) -> None:
        if self.popen.poll() is None:
            if self.step:  # an srun killed outright would leave its step's tasks behind
                _run(["scancel", self.step])
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        self.popen.wait()


#: slurmstepd's line when Slurm ends a job or step at its time limit
_TIME_LIMIT = re.compile(r"\*\*\* (?:JOB|STEP) \S+ ON \S+ CANCELLED AT \S+ DUE TO TIME LIMIT \*\*\*")


def _last_srun_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if "error" in ln]
    return lines[-1] if lines else ""


class SlurmHandle(EngineHandle):
    """A task of a Slurm launch. Only the task to blame reports the launch's
    failure first (so the job's reason names it), the others then; success
    is everyone's. While Slurm keeps the job pending, `waiting()` says why."""

    noun = "task"
    engine: SlurmEngine

    def poll(self) -> int | None:
        code = self.engine.poll()
        if code is None or code == 0:
            return code
        mine = self.engine.culprit is None or self.engine.culprit == self.spec.procs
        if mine or self.engine.reported:
            self.engine.reported = True
            return code
        return None

    def waiting(self) -> str | None:
        return self.engine.waiting()

    @property
    def host(self) -> str:
        if self.engine.culprit == self.spec.procs and self.engine.node:
            return self.engine.node
        return super().host

    def failure(self, code: int) -> str:
        if self.engine.culprit is None and self.engine.words:
            return f"ended: {self.engine.words}"
        return super().failure(code)


@launcher_registry.register("slurm")
class SlurmLauncher(EngineLauncher):
    """sbatch + srun from a login node, an srun step inside an allocation
    (see the module docstring)."""

    name = "slurm"
    chooses_hosts = True
    hosts_hint = ("Slurm chooses the hosts; drop --hostfile/--hosts "
                  "(ask for nodes with --slurm-opt '--nodes=2 --partition=...')")
    tool = "srun"

    def __init__(self, job_name: str = "singa", opts: list[str] | None = None,
                 threads: int = 1, alloc: str | None = None):
        self.job_name = job_name
        self.opts = list(opts or [])
        self.threads = threads
        self.alloc = alloc

    @classmethod
    def submit_options(cls, hosts: list[Any]) -> dict[str, Any]:
        return {}

    @classmethod
    def from_options(cls, job: Job, options: dict[str, Any]) -> Launcher:
        """Named after the singa job, as squeue shows it; with the user's
        --slurm-opt, the cores per task and the allocation (if any) recorded at submit."""
        s = options.get("slurm", {})
        return cls(f"singa-{job.id}-{job.name}", s.get("opts", []), int(s.get("threads", 1)),
                   s.get("allocation"))

    def advertise(self, interface: str | None) -> str:
        env = dict(os.environ)
        if self.alloc:
            env["SLURM_JOB_ID"] = self.alloc
        return advertise(interface, self.opts, env)

    def script(self, specs: list[ProcSpec], files: JobFiles) -> str:
        spec = specs[0]
        argv = _engine_argv(spec.argv[0], files, spec)
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(spec.env.items()))
        lines = ["#!/bin/sh", f"#SBATCH --job-name={shlex.quote(self.job_name)}"]
        lines += [f"#SBATCH {o}" for o in layout(len(specs), self.threads, self.opts)]
        lines += [f"#SBATCH --output={files.log_pattern.parent}/slurm-%j.out",
                  f"cd {shlex.quote(spec.cwd)} || exit 1",
                  # srun (22.05) no longer takes --cpus-per-task from the batch job
                  f"exec env {env} srun --kill-on-bad-exit=1 --ntasks={len(specs)} "
                  f"--cpus-per-task={self.threads} {shlex.join(argv)}", ""]
        return "\n".join(lines)

    def start_all(self, specs: list[ProcSpec], files: JobFiles) -> list[Handle]:
        if self.alloc:
            return self._step(specs, files)
        path = files.log_pattern.parent / "job.sbatch"
        path.write_text(self.script(specs, files))
        # the user's options come after the script's own #SBATCH lines: they win
        r = _run(["sbatch", "--parsable", *self.opts, str(path)])
        if r.returncode != 0:
            raise UserError(f"sbatch {path} failed: {r.stderr.strip() or r.stdout.strip()}")
        self.external_id = r.stdout.strip().split(";")[0]
        out = files.log_pattern.parent / f"slurm-{self.external_id}.out"
        engine = SlurmBatch(self.external_id, out)
        return [SlurmHandle(s, engine) for s in specs]

    def _step(self, specs: list[ProcSpec], files: JobFiles) -> list[Handle]:
        spec = specs[0]
        cmd = ["srun", f"--jobid={self.alloc}", f"--job-name={self.job_name}",
               "--kill-on-bad-exit=1", f"--ntasks={len(specs)}",
               f"--cpus-per-task={self.threads}", *self.opts,
               *_engine_argv(spec.argv[0], files, spec)]
        env = dict(os.environ, **spec.env, SLURM_JOB_ID=self.alloc or "")
        with _open_log(spec.launch_log) as out:
            popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                     env=env, cwd=spec.cwd, start_new_session=True)
        self.external_id = self._find_step(popen)
        engine = SlurmStep(popen, spec.launch_log, self.external_id)
        return [SlurmHandle(s, engine) for s in specs]

    def _find_step(self, popen: subprocess.Popen[bytes], timeout: float = 10.0) -> str | None:
        """The step's id (`ALLOC.STEP`) once squeue shows it under the job's name."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and popen.poll() is None:
            r = _run(["squeue", "-h", "-s", "-j", str(self.alloc), "-o", "%i|%j"])
            for line in r.stdout.splitlines():
                step, _, name = line.partition("|")
                if name.strip() == self.job_name:
                    return step.strip()
            time.sleep(0.2)
        return None
