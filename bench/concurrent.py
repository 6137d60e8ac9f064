"""The cluster manager's benchmark: several jobs submitted at once against
the same jobs one after another, on this host (issue 15, "Done when").

    python bench/concurrent.py [--quick] [--only a,b,c,d] [--repeats 1]

(a) Four LeNet jobs (examples/mnist/conv.conf, 400 train steps, 10 test
    batches at steps 0 and 400). Baseline: one after another, each in the
    foreground with `--cores 2` (a job alone gets the whole 2-core host: the
    best a user could do before the queue). Against it: all four submitted
    with `--detach` at once with the default cores (one per process), and
    the alternatives at once with `--cores 2` (the queue then runs them one
    at a time) and one after another with `--cores 1`. Each makespan runs
    from the first submit to the last job's end; goal: at once / one after
    another <= 0.85.
(b) Twenty small jobs (the MLP of examples/mnist/job.conf, 20 train steps,
    5 test batches; 2-4 s each) at once against one after another
    (foreground), both with the default cores; goal <= 1.0. The MLP conf
    states `num_openblas_threads: 2`, so its default is 2 cores: the
    `--cores 2` sequential baseline is that same run (the bench says so and
    does not repeat it). Alternative: at once with `--cores 1`.
(c) Queue latency, over every job of the "at once" runs of (a) and (b) that
    was queued: from the end of the job whose end freed its cores (the
    latest `ended` before its `admitted`) to its `admitted`, and to the start
    of its first process; median and max. Goal <= 1 s.
(d) Submit latency while busy: with 20 LeNet jobs active (2 running, 18
    queued), the wall time of `singa submit --detach` of one more job that
    must queue, median and max of 5 tries; the same submit on an idle
    registry and `python -c pass` are the baselines. Goal <= 1 s.

Every run has a fresh SINGA_HOME of its own and runs the real CLI
(`python -m singa_cli.main`, PYTHONPATH the repository); jobs are waited
for through the registry (runtime.jobs.jobdb). OPENBLAS_CORETYPE and the
rest of the environment pass to the jobs as they are. A bench never runs
in the test suite. Before each run the CPU taken by other processes is
sampled; the bench warns when it is above 15%, as the numbers then are
unreliable (multi-threaded BLAS suffers most).

What the numbers mean, and why one core per process by default
(runtime/jobs/resources.py DEFAULT_CORES_PER_PROC). Measured on a quiet
2-core host (AMD EPYC, numpy's OpenBLAS; ranges: two full runs): a LeNet
step (batch 64) takes 22 ms with one BLAS thread and 19 ms with two (its
small matmuls gain 1.13x from a second core), while two one-thread LeNet
processes side by side keep 22 ms each: 1.8x the throughput of one job on
both cores. So four LeNet jobs submitted at once with a core each (two run,
two queue) end in 0.61x the time of running them one after another with both
cores each; with `--cores 2` each the queue runs them one at a time,
0.92-1.02x: the queue itself costs next to nothing (a makespan varies ~5%
from run to run). The MLP's large matmuls do gain from a second thread (72
-> 46 ms/step, 1.57x) and its conf asks for two, so twenty of them at once
run one at a time like the sequential baseline (0.91-0.98x); with `--cores
1` they run two at a time in 0.61-0.65x, as two one-thread steps side by
side give 1.18x the throughput of one two-thread step and each job's
single-threaded start-up (~1 s: Python, validation, the init of 12M params)
overlaps the other's training. Hence a core per process: jobs pack side by
side instead of waiting for a whole host they would barely use, no host runs
more BLAS threads than it has cores, and a job that gains from more threads
says so (`num_openblas_threads`, `--cores`). The hand-over is quick: a
queued job is admitted within a few ms of the end that frees its cores (the
pass runs in the transaction that records the end) and its first process
starts 20-110 ms later (its master polls the registry every 0.1 s). A submit
with 20 jobs active takes 0.7-0.76 s against ~0.35 s idle; its own CPU time
is the same (~0.4 s): the rest is waiting for a core the two running jobs
hold (the 18 waiting masters take ~0.25% of a core each).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LENET, MLP = "examples/mnist/conv.conf", "examples/mnist/job.conf"
GOAL_A, GOAL_B, GOAL_C, GOAL_D = 0.85, 1.0, 1.0, 1.0
BUSY_WARN = 0.15


def _fix_path() -> None:
    """`python bench/concurrent.py` puts bench/ first on sys.path, where this
    file would shadow the standard library's `concurrent` package for any
    later `import concurrent.futures`; the repository goes there instead (the
    registry's modules are imported from it)."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.path.insert(0, str(ROOT))


# --- the machine --------------------------------------------------------------

def busy(seconds: float = 1.0) -> float | None:
    """The fraction of the CPUs busy over `seconds` (from /proc/stat), taken
    while the bench runs nothing: what other tenants take."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait
    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except OSError:
        return None
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def clock_fix() -> float:
    """What to add to a process's recorded start time (psutil's create_time)
    to compare it with time.time(): psutil counts from the boot time in whole
    seconds (/proc/stat btime), so its times are early by the boot time's
    fraction of a second."""
    import psutil

    try:
        return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME) - psutil.boot_time()
    except (AttributeError, OSError):
        return 0.0


def check_quiet(label: str) -> None:
    """Sample the other tenants before a run; warn when they are busy."""
    b = busy(1.0)
    if b is not None and b > BUSY_WARN:
        print(f"  ! before {label}: other processes keep {b:.0%} of the CPUs busy "
              f"(load {loadavg()}): this run's time is unreliable", flush=True)


# --- confs, registries, the CLI -------------------------------------------------

def conf_threads(base: str) -> int | None:
    """The `num_openblas_threads` the conf states (None: it states none)."""
    m = re.search(r"^num_openblas_threads: (\d+)", (ROOT / base).read_text(), flags=re.M)
    return int(m.group(1)) if m else None


def write_conf(base: str, path: Path, workspace: Path, steps: int, test_steps: int) -> Path:
    """`base` with `steps` train steps, `test_steps` test batches at steps 0
    and `steps`, absolute data paths and its own workspace (an active job
    holds its workspace, so each job of a run needs one)."""
    text = (ROOT / base).read_text()
    for key, value in (("train_steps", steps), ("test_steps", test_steps),
                       ("test_freq", steps), ("disp_freq", max(1, steps // 4))):
        text, n = re.subn(rf"^{key}: \d+", f"{key}: {value}", text, flags=re.M)
        assert n == 1, f"{base}: no top-level {key} to set"
    for name in ("train_data.bin", "test_data.bin"):
        text = text.replace(f'path: "{name}"', f'path: "{ROOT}/examples/mnist/{name}"')
    text, n = re.subn(r'^(\s*)workspace: ".*"', rf'\1workspace: "{workspace}"', text, flags=re.M)
    assert n == 1, f"{base}: no cluster workspace to set"
    path.write_text(text)
    return path


class Home:
    """A fresh SINGA_HOME for one run, with the CLI's environment and the registry."""

    def __init__(self, tmp: Path, label: str):
        self.dir = Path(tempfile.mkdtemp(prefix=re.sub(r"\W+", "-", label) + "-", dir=tmp))
        self.path = self.dir / "home"
        self.env = dict(os.environ, SINGA_HOME=str(self.path))
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        from runtime.jobs import jobdb

        self.reg = jobdb.JobDB(self.path)

    def confs(self, base: str, n: int, steps: int, test_steps: int) -> list[Path]:
        return [write_conf(base, self.dir / f"job{i}.conf", self.dir / f"ws{i}", steps, test_steps)
                for i in range(n)]

    def singa(self, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
        """Run `singa ARGS`; the result and its wall time."""
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "singa_cli.main", *args], cwd=self.dir,
                           env=self.env, capture_output=True, text=True)
        return r, time.perf_counter() - t

    def submit(self, conf: Path, *args: str) -> tuple[int, float]:
        """`singa submit ARGS CONF`: the job's id and the command's wall time."""
        r, t = self.singa("submit", *args, str(conf))
        m = re.search(r"Submitted job (\d+)", r.stdout + r.stderr)
        if m is None:
            raise RuntimeError(f"singa submit {' '.join(args)} {conf} exited {r.returncode}:\n"
                               f"{(r.stdout + r.stderr)[-2000:]}")
        return int(m.group(1)), t

    def wait(self, ids: list[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.reg.job(i).terminal for i in ids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs {ids} not ended after {timeout:.0f} s")
            time.sleep(0.2)

    def stop_all(self) -> None:
        """Kill every job still active: the queued ones first (newest first),
        so that no kill frees cores a queued job would then start on."""
        from runtime.jobs import jobdb
        from runtime.jobs.kill import kill_job

        active = self.reg.jobs([jobdb.QUEUED, jobdb.PENDING, jobdb.RUNNING])
        for j in sorted(active, key=lambda j: (j.state != jobdb.QUEUED, -j.id)):
            kill_job(self.reg, j.id, grace=1.0, reason="stopped by bench/concurrent.py")


@dataclass
class Run:
    """One scenario's outcome: its makespan and the jobs' rows at the end."""

    label: str
    at_once: bool
    makespan: float
    jobs: list[Any]
    first_start: dict[int, float] = field(default_factory=dict)  # job id -> its first process
    failed: list[str] = field(default_factory=list)


def run_jobs(tmp: Path, label: str, base: str, n: int, steps: int, test_steps: int,
             cores: int | None, at_once: bool, timeout: float) -> Run:
    """Submit `n` jobs of `base` to a fresh registry, at once (`--detach`,
    one submit after the other as fast as they return) or one after another
    (each in the foreground, so the next starts when it has ended)."""
    home = Home(tmp, label)
    confs = home.confs(base, n, steps, test_steps)
    args = (["--cores", str(cores)] if cores else []) + (["--detach"] if at_once else [])
    check_quiet(label)
    ids: list[int] = []
    try:
        t0 = time.time()
        for conf in confs:
            ids.append(home.submit(conf, *args)[0])
        home.wait(ids, timeout)
    finally:
        home.stop_all()
    jobs = [home.reg.job(i) for i in ids]
    failed = [f"job {j.id} {j.state}: {j.reason}" for j in jobs if j.state != "SUCCEEDED"]
    fix = clock_fix()
    first = {j.id: fix + min((p.start_time for p in home.reg.all_procs(j.id) if p.start_time),
                             default=float("nan")) for j in jobs}
    home.reg.close()
    end = max((j.ended for j in jobs if j.ended is not None), default=float("nan"))
    return Run(label, at_once, end - t0, jobs, first, failed)


def scenarios(tmp: Path, specs: list[tuple[str, dict[str, Any]]], repeats: int,
              common: dict[str, Any]) -> dict[str, list[Run]]:
    """Run each spec `repeats` times, in turns (the order reversed every
    other round, so a drift in the machine's load weighs on all alike)."""
    out: dict[str, list[Run]] = {k: [] for k, _ in specs}
    for r in range(repeats):
        for key, kw in (specs if r % 2 == 0 else specs[::-1]):
            run = run_jobs(tmp, key, **common, **kw)
            for f in run.failed:
                print(f"  ! {key}: {f}", flush=True)
            out[key].append(run)
    return out


def median_span(runs: list[Run]) -> float:
    return statistics.median(r.makespan for r in runs)


def spans(runs: list[Run]) -> str:
    return "/".join(f"{r.makespan:.1f}" for r in runs)


def report(specs: list[tuple[str, dict[str, Any]]], runs: dict[str, list[Run]],
           base_key: str, goal_key: str, goal: float) -> None:
    base = median_span(runs[base_key])
    for key, _ in specs:
        m = median_span(runs[key])
        line = f"  {key:44} {spans(runs[key]):>12} s"
        if key != base_key:
            ratio = m / base
            line += f"  {ratio:.2f}x"
            if key == goal_key:
                line += f" (goal <= {goal}) {'ok' if ratio <= goal else 'MISSED'}"
        else:
            line += "  (baseline)"
        print(line, flush=True)


# --- (a), (b) -------------------------------------------------------------------

def bench_a(tmp: Path, quick: bool, repeats: int, only_at_once: bool = False) -> list[Run]:
    n, steps = (2, 100) if quick else (4, 400)
    print(f"(a) {n} LeNet jobs ({steps} train steps, 10 test batches at steps 0 and {steps}); "
          "makespan from the first submit to the last end", flush=True)
    seq2, once1 = "one after another, --cores 2", "at once, default (1 core per process)"
    specs: list[tuple[str, dict[str, Any]]] = [
        (seq2, {"cores": 2, "at_once": False}),
        (once1, {"cores": None, "at_once": True}),
        ("at once, --cores 2", {"cores": 2, "at_once": True}),
    ]
    if not quick:
        specs.append(("one after another, --cores 1", {"cores": 1, "at_once": False}))
    if only_at_once:
        specs = [s for s in specs if s[1]["at_once"]]
    runs = scenarios(tmp, specs, repeats, {"base": LENET, "n": n, "steps": steps,
                                           "test_steps": 10, "timeout": 900})
    if not only_at_once:
        report(specs, runs, seq2, once1, GOAL_A)
    return [r for k, _ in specs for r in runs[k] if r.at_once]


def bench_b(tmp: Path, quick: bool, repeats: int, only_at_once: bool = False) -> list[Run]:
    n, steps = (6, 10) if quick else (20, 20)
    threads = conf_threads(MLP)
    print(f"(b) {n} MLP jobs ({steps} train steps, 5 test batches at steps 0 and {steps}); "
          "default cores", flush=True)
    seq, once = "one after another, default cores", "at once, default cores"
    specs: list[tuple[str, dict[str, Any]]] = [
        (seq, {"cores": None, "at_once": False}),
        (once, {"cores": None, "at_once": True}),
    ]
    if not quick:
        specs.append(("at once, --cores 1", {"cores": 1, "at_once": True}))
    if threads == 2:
        print(f"  ({MLP} states num_openblas_threads: 2, so the default is 2 cores per process: "
              "the sequential --cores 2 baseline is the default one)", flush=True)
    elif not only_at_once:
        specs.append(("one after another, --cores 2", {"cores": 2, "at_once": False}))
    if only_at_once:
        specs = [s for s in specs if s[1]["at_once"]]
    runs = scenarios(tmp, specs, repeats, {"base": MLP, "n": n, "steps": steps, "test_steps": 5,
                                           "timeout": 900})
    if not only_at_once:
        report(specs, runs, seq, once, GOAL_B)
        per_job = [j.ended - j.started for r in runs[seq] for j in r.jobs if j.started and j.ended]
        if per_job:
            print(f"  one job alone runs {statistics.median(per_job):.1f} s (median, from RUNNING "
                  "to its end)", flush=True)
    return [r for k, _ in specs for r in runs[k] if r.at_once]


# --- (c) ------------------------------------------------------------------------

def queue_latency(run: Run) -> list[tuple[float, float]]:
    """(end -> admitted, end -> first process start) of each job of `run`
    that was queued: admitted later than submitted (a job admitted at submit
    is admitted in the transaction that records it). The end is that of the
    job whose end freed its cores: the latest `ended` before its `admitted`."""
    out = []
    for j in run.jobs:
        if j.admitted is None or j.admitted - j.submitted < 0.05:
            continue
        ends = [o.ended for o in run.jobs if o.ended is not None and o.ended <= j.admitted]
        if not ends:
            continue
        freed = max(ends)
        out.append((j.admitted - freed, run.first_start.get(j.id, float("nan")) - freed))
    return out


def bench_c(runs: list[Run]) -> None:
    print("(c) queue latency of the queued jobs of the at-once runs: from the end that freed "
          "their cores to their admission, and to their first process's start", flush=True)
    every: list[tuple[float, float]] = []
    for r in runs:
        lat = queue_latency(r)
        every += lat
        if lat:
            print(f"  {r.label:44} {len(lat):3} queued: admitted median "
                  f"{statistics.median(a for a, _ in lat) * 1e3:5.0f} ms max "
                  f"{max(a for a, _ in lat) * 1e3:5.0f} ms; first process median "
                  f"{statistics.median(s for _, s in lat) * 1e3:5.0f} ms max "
                  f"{max(s for _, s in lat) * 1e3:5.0f} ms", flush=True)
    if not every:
        print("  no job was queued", flush=True)
        return
    worst = max(max(a, s) for a, s in every)
    print(f"  all {len(every)} queued jobs: to admitted median "
          f"{statistics.median(a for a, _ in every):.3f} s max {max(a for a, _ in every):.3f} s; "
          f"to first process median {statistics.median(s for _, s in every):.3f} s max "
          f"{max(s for _, s in every):.3f} s (goal <= {GOAL_C:g} s) "
          f"{'ok' if worst <= GOAL_C else 'MISSED'}", flush=True)


# --- (d) ------------------------------------------------------------------------

@contextmanager
def busy_registry(tmp: Path, n: int, spare: int) -> Iterator[tuple[Home, list[Path]]]:
    """A registry with `n` long LeNet jobs active (as many running as the
    host's cores take at one core each, the rest queued), and `spare` more
    confs of the same job, each with a workspace of its own."""
    home = Home(tmp, "busy")
    confs = home.confs(LENET, n + spare, 100000, 1)
    try:
        for conf in confs[:n]:
            home.submit(conf, "--detach")
        yield home, confs[n:]
    finally:
        home.stop_all()
        home.reg.close()


@dataclass
class Probe:
    wall: float  # seconds, the command's whole life
    cpu: float   # seconds of CPU it used (user + system)
    state: str   # the job's state right after


def probe(home: Home, conf: Path) -> Probe:
    """One `singa submit --detach`, timed; then that job is killed."""
    import resource

    from runtime.jobs.kill import kill_job

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)  # the submit, once waited for
        return r.ru_utime + r.ru_stime

    c = cpu()
    job_id, t = home.submit(conf, "--detach")
    used = cpu() - c
    state = home.reg.job(job_id).state
    kill_job(home.reg, job_id, grace=1.0, reason="bench probe")
    return Probe(t, used, state)


def bench_d(tmp: Path, quick: bool) -> None:
    from runtime.jobs import jobdb

    n, tries = (6, 3) if quick else (20, 5)
    print(f"(d) wall time of `singa submit --detach` of a job that must queue, with {n} jobs "
          "active, against the same on an idle registry", flush=True)
    idle = Home(tmp, "idle")
    check_quiet("(d)")
    py = []
    for _ in range(tries):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=idle.env, check=True)
        py.append(Probe(time.perf_counter() - t, float("nan"), ""))
    confs = idle.confs(LENET, tries + 1, 100000, 1)
    probe(idle, confs[-1])  # warm-up: file caches
    base = [probe(idle, c) for c in confs[:tries]]
    idle.reg.close()
    with busy_registry(tmp, n, tries) as (home, spare):
        states = [j.state for j in home.reg.jobs([jobdb.QUEUED, jobdb.PENDING, jobdb.RUNNING])]
        queued = states.count(jobdb.QUEUED)
        print(f"  busy registry: {len(states)} active, {len(states) - queued} admitted, "
              f"{queued} queued (load {loadavg()})", flush=True)
        busy_p = [probe(home, c) for c in spare]
    if any(p.state != jobdb.QUEUED for p in busy_p):
        print(f"  ! not every probe queued: {[p.state for p in busy_p]}", flush=True)
    for name, ps in (("python -c pass", py), ("submit --detach, idle registry", base),
                     (f"submit --detach, {n} active (it queues)", busy_p)):
        walls = [p.wall for p in ps]
        line = f"  {name:44} median {statistics.median(walls):.3f} s  max {max(walls):.3f} s"
        if ps[0].cpu == ps[0].cpu:
            line += f"  (CPU used: median {statistics.median(p.cpu for p in ps):.3f} s)"
        print(line, flush=True)
    med, worst = statistics.median(p.wall for p in busy_p), max(p.wall for p in busy_p)
    print(f"  busy / idle: {med / statistics.median(p.wall for p in base):.2f}x; goal median and "
          f"max <= {GOAL_D:g} s: {'ok' if worst <= GOAL_D else 'MISSED'}", flush=True)


def prepare(tmp: Path, source: bool) -> str:
    """Compiled modules for the bench's processes, as an installed singa has
    them: when PYTHONDONTWRITEBYTECODE is set (and `--source` is not given),
    every process would compile each module it imports from source (0.2 s of
    CPU for the CLI alone); they are compiled once into a cache of the bench's
    own instead (PYTHONPYCACHEPREFIX), the repository untouched. Then one
    short job runs, so file caches are warm. Returns what was done, for the
    header line."""
    note = "modules compiled as found"
    if os.environ.get("PYTHONDONTWRITEBYTECODE") and not source:
        os.environ.pop("PYTHONDONTWRITEBYTECODE")
        os.environ["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0",
                        *(str(ROOT / d) for d in ("runtime", "singa_cli", "conf"))], check=True)
        note = "PYTHONDONTWRITEBYTECODE set: compiled modules cached in the bench's temp dir"
    elif os.environ.get("PYTHONDONTWRITEBYTECODE"):
        note = "PYTHONDONTWRITEBYTECODE set: every process compiles from source (--source)"
    home = Home(tmp, "warm-up")
    conf = write_conf(MLP, home.dir / "job.conf", home.dir / "ws", 2, 1)
    home.submit(conf)
    home.reg.close()
    return note


def main() -> int:
    _fix_path()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="a,b,c,d", help="parts to run, e.g. a,c")
    ap.add_argument("--quick", action="store_true", help="fewer jobs and steps: a smoke run")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each scenario, in turns")
    ap.add_argument("--source", action="store_true",
                    help="keep PYTHONDONTWRITEBYTECODE as set: no compiled modules (see prepare)")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    if not parts <= set("abcd"):
        ap.error(f"--only {args.only}: expected parts among a,b,c,d")
    if not (ROOT / "examples/mnist/train_data.bin").exists():
        print("missing examples/mnist/train_data.bin: run bin/setup first", file=sys.stderr)
        return 2
    from runtime.jobs import resources

    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="singa-bench-concurrent-") as d:
        tmp = Path(d)
        note = prepare(tmp, args.source)
        print(f"bench/concurrent.py: {resources.local_cores()} cores, load {loadavg()}, "
              f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"
              f"{', quick' if args.quick else ''}; {note}", flush=True)
        at_once: list[Run] = []
        # (c) reads the at-once runs of (a) and (b); alone, it runs just those
        if "a" in parts or "c" in parts:
            at_once += bench_a(tmp, args.quick, args.repeats, only_at_once="a" not in parts)
        if "b" in parts or "c" in parts:
            at_once += bench_b(tmp, args.quick, args.repeats, only_at_once="b" not in parts)
        if "c" in parts:
            bench_c(at_once)
        if "d" in parts:
            bench_d(tmp, args.quick)
    print(f"done in {time.perf_counter() - t:.0f} s, load {loadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
