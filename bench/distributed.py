"""Benchmarks of the distributed runtime, each a ratio against a baseline
measured in the same run (issue: distributed runtime, item 6).

    python bench/distributed.py [--only a,b,c,d] [--steps 300] [--repeats 3]

(a) per-step time of 1 worker + 1 server in two processes against the
    single-process run (goals: LeNet <= 1.15x, MLP <= 1.5x);
(b) throughput of sync training, one group of 2 workers (1 BLAS thread each,
    one process each) against 1 worker with 2 BLAS threads, on LeNet (goal
    >= 1.0), with the server beside worker 0, with the params sliced over
    a server in each process (SINGA's AllReduce), and with both workers as
    threads of one process; and the per-core scaling
    efficiency: the throughput on 2 cores over twice that of 1 worker with 1
    BLAS thread (one core's worth);
(c) parameter round trips of a 4 MB slice (send 4 MB of gradient, get 4 MB
    of values back) through the runtime's Stub/Server path over ipc://
    against raw pyzmq ROUTER/DEALER doing the same work on the same transport
    (goal >= 80%), and against a bare pyzmq echo (see bench/_roundtrip.py);
(d) time to reach 0.85 test accuracy on LeNet with 1 worker, 2 sync workers,
    2 async groups and 2 x 2 hybrid: a table with the speed-up against 1
    worker.

Jobs run through `singa submit`, as a user runs them; only the `Train @ step
N` and `Test @ step N ... accuracy = X` lines of its stdout are read. Step
times are the slope of a least-squares line through the arrival times of the
Train lines (submit relays the log in bursts, every 0.2 s), after a warm-up.
Configurations to compare run alternately, `--repeats` times each, and each
ratio is the median of the ratios of neighbouring runs: the other tenants of
this 2-core machine then weigh on both sides alike.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = re.compile(r"^Train @ step (\d+)")
TEST = re.compile(r"^Test @ step (\d+)  .*accuracy = ([0-9.]+)")
LENET, MLP = "examples/mnist/conv.conf", "examples/mnist/job.conf"


def busy(seconds: float = 1.0) -> float | None:
    """The fraction of the CPUs busy over `seconds` (from /proc/stat), while
    this bench runs nothing: what other tenants take."""
    def sample():
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


_others: list[float] = []  # busy() samples taken between the runs of the current part


def sample_others(seconds: float = 0.5) -> None:
    b = busy(seconds)
    if b is not None:
        _others.append(b)


def check_quiet(part: str, start: bool = True) -> None:
    """Warn when other processes took CPU before (start) or between the
    runs of a part: its ratios are then unreliable."""
    if start:
        _others.clear()
        sample_others(1.0)
    worst = max(_others, default=0.0)
    if worst > 0.15:
        when = "now" if start else "between its runs"
        print(f"  ! ({part}) other processes keep up to {worst:.0%} of the CPUs busy {when}: "
              "the numbers are unreliable (multi-threaded BLAS suffers most)", flush=True)


def conf_for(base: str, cluster: str, steps: int, threads: int, extra: dict[str, str],
             tmp: Path, name: str, lr: str | None = None, skip: int = 0) -> Path:
    """`base` with its cluster block replaced by `cluster`, `steps` train
    steps, `threads` BLAS threads, top-level fields `extra`, and optionally
    another base_lr and a random_skip on the train data."""
    text = (ROOT / base).read_text()
    text = re.sub(r"^train_steps: \d+", f"train_steps: {steps}", text, flags=re.M)
    text = re.sub(r"^num_openblas_threads: \d+", f"num_openblas_threads: {threads}", text, flags=re.M)
    for k, v in extra.items():
        text, n = re.subn(rf"^{k}: .*$", f"{k}: {v}", text, flags=re.M)
        if n == 0:
            text = f"{k}: {v}\n" + text
    if lr is not None:
        text = re.sub(r"base_lr: [0-9.e-]+", f"base_lr: {lr}", text, count=1)
    if skip:
        text = text.replace('path: "train_data.bin"',
                            f'path: "train_data.bin"\n      random_skip: {skip}', 1)
    text = text.replace('path: "train_data.bin"', f'path: "{ROOT}/examples/mnist/train_data.bin"')
    text = text.replace('path: "test_data.bin"', f'path: "{ROOT}/examples/mnist/test_data.bin"')
    cluster_block = "cluster {\n  " + cluster + f'\n  workspace: "{tmp}/ws-{name}"\n}}\n'
    text = re.sub(r"cluster \{.*\}\s*$", cluster_block, text, flags=re.S)
    p = tmp / f"{name}.conf"
    p.write_text(text)
    return p


def run(conf: Path, until_acc: float | None = None) -> dict:
    """Run a job with `singa submit`; its Train marks [(step, t)], Test
    results [(step, accuracy, t)] and, with `until_acc`, the time from submit
    to the first Test line at or above it (the job is then stopped)."""
    t0 = time.perf_counter()
    errf = tempfile.TemporaryFile("w+")  # not a pipe: nothing blocks submit while we read stdout
    proc = subprocess.Popen([sys.executable, "-m", "singa_cli.main", "submit", str(conf)],
                            stdout=subprocess.PIPE, stderr=errf, text=True, cwd=ROOT)
    marks: list[tuple[int, float]] = []
    tests: list[tuple[int, float, float]] = []
    reached = None
    lines: list[str] = []
    for line in proc.stdout:
        now = time.perf_counter() - t0
        lines = (lines + [line.rstrip()])[-5:]
        m = TRAIN.match(line)
        if m:
            marks.append((int(m.group(1)), now))
        m = TEST.match(line)
        if m:
            tests.append((int(m.group(1)), float(m.group(2)), now))
            if until_acc is not None and reached is None and float(m.group(2)) >= until_acc:
                reached = now
                proc.terminate()  # submit stops the job's processes
    proc.wait()
    errf.seek(0)
    err = errf.read()
    errf.close()
    if reached is None and proc.returncode != 0:
        tail = "\n    ".join(err.strip().splitlines()[-5:] + lines)
        print(f"  ! {conf.name}: singa submit exited {proc.returncode}:\n    {tail}", file=sys.stderr)
    return {"marks": marks, "tests": tests, "reached": reached, "code": proc.returncode}


def per_step(marks: list[tuple[int, float]], warmup: float = 0.15) -> float | None:
    """Seconds per step: the least-squares slope of time over step, without
    the first `warmup` fraction of the marks (start-up, first allocations)."""
    if len(marks) < 4:
        return None
    pts = marks[max(1, int(len(marks) * warmup)):]
    n = len(pts)
    ms = sum(s for s, _ in pts) / n
    mt = sum(t for _, t in pts) / n
    var = sum((s - ms) ** 2 for s, _ in pts)
    return sum((s - ms) * (t - mt) for s, t in pts) / var if var else None


def alternate(confs: dict[str, Path], repeats: int) -> dict[str, list[float]]:
    """Per-step times of each conf, run in turns `repeats` times."""
    out: dict[str, list[float]] = {k: [] for k in confs}
    for r in range(repeats):
        for k in (list(confs) if r % 2 == 0 else list(confs)[::-1]):
            sample_others()
            t = per_step(run(confs[k])["marks"])
            out[k].append(t if t is not None else float("nan"))
    return out


def paired(a: list[float], b: list[float]) -> float:
    """The median of a[i] / b[i] (each pair ran back to back), over the
    pairs where both runs gave a time."""
    ratios = [x / y for x, y in zip(a, b) if x == x and y == y and y]
    return statistics.median(ratios) if ratios else float("nan")


def ms(xs: list[float]) -> str:
    return "/".join(f"{x * 1e3:.1f}" for x in xs)


def bench_a(tmp: Path, steps: int, repeats: int) -> None:
    print("(a) 1 worker + 1 server in two processes vs one process (1 BLAS thread)", flush=True)
    check_quiet("a")
    extra = {"disp_freq": "10", "test_steps": "0", "test_freq": "0"}
    for base, goal, n in ((LENET, 1.15, steps), (MLP, 1.5, max(60, steps // 3))):
        confs = {"one": conf_for(base, "", n, 1, extra, tmp, "a1"),
                 "two": conf_for(base, "server_worker_separate: true", n, 1, extra, tmp, "a2")}
        t = alternate(confs, repeats)
        r = paired(t["two"], t["one"])
        print(f"  {Path(base).name:10} one process {ms(t['one'])} ms/step, two {ms(t['two'])}"
              f" ms/step: {r:.2f}x (goal <= {goal}) {'ok' if r <= goal else 'MISSED'}", flush=True)
    check_quiet("a", start=False)


# (b)'s two ways to place the server(s) of a group of 2 workers on 2 processes
B_TOPOLOGIES = {
    "1 server": "nworkers_per_group: 2",            # the server beside worker 0 (Sandblaster-like)
    # both workers as threads of one process: the replicas share the params,
    # the grads are summed in memory and one update per step goes out
    "one process": "nworkers_per_group: 2\n  nworkers_per_procs: 2",
    "allreduce": "nworkers_per_group: 2\n  nservers_per_group: 2",  # half the params beside each worker
}


def bench_b(tmp: Path, steps: int, repeats: int, topologies: dict[str, str]) -> None:
    print("(b) sync, 1 group of 2 workers x 1 BLAS thread (a process each) vs 1 worker x 2 "
          "BLAS threads (LeNet, batch 64 = 2 x 32)", flush=True)
    check_quiet("b")
    extra = {"disp_freq": "10", "test_steps": "0", "test_freq": "0"}
    confs = {"1w2t": conf_for(LENET, "", steps, 2, extra, tmp, "b1")}
    for i, (name, cluster) in enumerate(topologies.items()):
        confs[name] = conf_for(LENET, cluster, steps, 1, extra, tmp, f"b2-{i}")
    confs["1w1t"] = conf_for(LENET, "", steps, 1, extra, tmp, "b0")
    t = alternate(confs, repeats)
    print(f"  ms/step: 1 worker x 2 threads {ms(t['1w2t'])}; 1 worker x 1 thread "
          f"{ms(t['1w1t'])}", flush=True)
    eff1 = paired(t["1w1t"], t["1w2t"]) / 2
    for name, cluster in topologies.items():
        r = paired(t["1w2t"], t[name])
        eff = paired(t["1w1t"], t[name]) / 2
        print(f"  2 workers, {name} ({' '.join(cluster.split())}): {ms(t[name])} ms/step, "
              f"throughput {r:.2f}x of 1 worker x 2 threads (goal >= 1.0) "
              f"{'ok' if r >= 1.0 else 'MISSED'}; per-core efficiency {eff:.0%}", flush=True)
    print(f"  per-core efficiency: throughput on 2 cores / twice that of 1 worker x 1 thread "
          f"(1 worker x 2 threads: {eff1:.0%})", flush=True)
    check_quiet("b", start=False)


def bench_c(mb: float = 4.0) -> None:
    print(f"(c) round trips of a {mb:g} MB slice over ipc:// (send the grad, get the values)",
          flush=True)
    check_quiet("c")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "_roundtrip.py"), "--mb", str(mb),
                          "--modes", "raw,raw-ps,singa"],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode != 0:
        print(f"  ! _roundtrip.py failed:\n{out.stderr}", file=sys.stderr)
        return
    res = json.loads(out.stdout.strip().splitlines()[-1])
    raw, ps, singa = res["raw"], res["raw-ps"], res["singa"]
    r = singa["vs_raw-ps"]
    print(f"  raw pyzmq echo {raw['median']:.0f}/s; raw pyzmq parameter server (same SGD, "
          f"reply stored) {ps['median']:.0f}/s; singa Stub/Server {singa['median']:.0f}/s", flush=True)
    print(f"  singa / raw pyzmq doing the same work: {r:.0%} (goal >= 80%) "
          f"{'ok' if r >= 0.8 else 'MISSED'}; singa / bare echo {singa['vs_raw']:.0%} "
          f"(the echo neither updates nor stores 4 MB)", flush=True)


def bench_d(tmp: Path, test_freq: int, test_steps: int, max_steps: int) -> None:
    print(f"(d) time to test accuracy 0.85 on LeNet (test every {test_freq} steps on "
          f"{test_steps * 100} images)", flush=True)
    check_quiet("d")
    extra = {"disp_freq": str(test_freq), "test_freq": str(test_freq),
             "test_steps": str(test_steps)}
    # async groups halve the learning rate, as examples/frameworks do, and
    # start at different places in the data
    rows = [("1 worker", "", 2, None, 0),
            ("2 sync workers", "nworkers_per_group: 2", 1, None, 0),
            ("2 async groups", "nworker_groups: 2", 1, "0.005", 5000),
            ("2 x 2 hybrid", "nworker_groups: 2\n  nworkers_per_group: 2\n  nworkers_per_procs: 2",
             1, "0.005", 5000)]
    print(f"  {'':16} {'time (s)':>9} {'at step':>8} {'speed-up':>9}", flush=True)
    base_t = None
    for name, cluster, threads, lr, skip in rows:
        conf = conf_for(LENET, cluster, max_steps, threads, extra, tmp,
                        name.replace(" ", "_"), lr=lr, skip=skip)
        sample_others()
        res = run(conf, until_acc=0.85)
        t = res["reached"]
        step = next((s for s, a, _ in res["tests"] if a >= 0.85), None)
        if base_t is None:
            base_t = t
        speed = f"{base_t / t:.2f}x" if t and base_t else "-"
        best = max((a for _, a, _ in res["tests"]), default=None)
        shown = f"{t:.1f}" if t else f"not ({best})"
        print(f"  {name:16} {shown:>9} {step if step is not None else '-'!s:>8} {speed:>9}",
              flush=True)
    check_quiet("d", start=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="a,b,c,d")
    ap.add_argument("--steps", type=int, default=300, help="train steps of the (a) and (b) runs")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each configuration, in turns")
    ap.add_argument("--b-cluster", action="append", default=None, metavar="FIELDS",
                    help="(b): a cluster block for the 2-worker run instead of the built-in "
                         "topologies (repeatable)")
    ap.add_argument("--test-freq", type=int, default=100, help="(d): steps between tests")
    ap.add_argument("--test-steps", type=int, default=20, help="(d): test batches of 100 images")
    ap.add_argument("--max-steps", type=int, default=4000, help="(d): give up after this many steps")
    args = ap.parse_args()
    if not (ROOT / "examples/mnist/train_data.bin").exists():
        print("missing examples/mnist/train_data.bin: run bin/setup first", file=sys.stderr)
        return 2
    parts = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="singa-bench-") as d:
        tmp = Path(d)
        # the bench's jobs go to a registry of their own, not the user's
        os.environ["SINGA_HOME"] = str(tmp / "home")
        if "a" in parts:
            bench_a(tmp, args.steps, args.repeats)
        if "b" in parts:
            topologies = ({c: c for c in args.b_cluster} if args.b_cluster else B_TOPOLOGIES)
            bench_b(tmp, args.steps, args.repeats, topologies)
        if "c" in parts:
            bench_c()
        if "d" in parts:
            bench_d(tmp, args.test_freq, args.test_steps, args.max_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
