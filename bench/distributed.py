"""Benchmarks of the distributed runtime, each a ratio against a baseline
measured in the same run (issue: distributed runtime, item 6).

    python bench/distributed.py [--steps 200] [--only a,b,c,d]

(a) per-step time of 1 worker + 1 server in two processes against the
    single-process run (goals: LeNet <= 1.15x, MLP <= 1.5x);
(b) throughput of sync training with 2 workers (1 BLAS thread each) against
    1 worker with 2 BLAS threads (goal >= 1.0) and the per-core efficiency;
(c) param round trips of 4 MB slices through a Server over ipc:// against
    raw pyzmq ROUTER/DEALER on the same transport (goal >= 80%);
(d) time to reach 0.85 test accuracy on LeNet with 1 worker, 2 sync
    workers, 2 async groups and 2 x 2 hybrid (speed-up against 1 worker).

Jobs run through `singa submit` as a user runs them; step times come from
the arrival times of the `Train @ step N` lines.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = re.compile(r"^Train @ step (\d+)")
TEST = re.compile(r"^Test @ step (\d+)  .*accuracy = ([0-9.]+)")


def conf_for(base: str, cluster: str, steps: int, threads: int, extra: dict[str, str],
             tmp: Path, name: str) -> Path:
    text = (ROOT / base).read_text()
    text = re.sub(r"^train_steps: \d+", f"train_steps: {steps}", text, flags=re.M)
    text = re.sub(r"^num_openblas_threads: \d+", f"num_openblas_threads: {threads}", text, flags=re.M)
    for k, v in extra.items():
        text = re.sub(rf"^{k}: .*$", f"{k}: {v}", text, flags=re.M)
    text = text.replace('path: "train_data.bin"', f'path: "{ROOT}/examples/mnist/train_data.bin"')
    text = text.replace('path: "test_data.bin"', f'path: "{ROOT}/examples/mnist/test_data.bin"')
    text = re.sub(r"cluster \{.*\}\s*$", "cluster {\n  " + cluster + f'\n  workspace: "{tmp}/ws-{name}"\n}}\n',
                  text, flags=re.S)
    p = tmp / f"{name}.conf"
    p.write_text(text)
    return p


def run(conf: Path, until_acc: float | None = None) -> dict:
    """Run a job; return step times and (optionally) the time to an accuracy."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "singa_cli.main", "submit", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    marks: list[tuple[int, float]] = []
    reached = None
    for line in proc.stdout:
        now = time.perf_counter()
        m = TRAIN.match(line)
        if m:
            marks.append((int(m.group(1)), now))
        m = TEST.match(line)
        if m and until_acc is not None and reached is None and float(m.group(2)) >= until_acc:
            reached = now - t0
            proc.terminate()
    proc.wait()
    per_step = None
    if len(marks) >= 3:
        (s0, t_0), (s1, t_1) = marks[1], marks[-1]
        per_step = (t_1 - t_0) / (s1 - s0)
    return {"per_step": per_step, "reached": reached, "code": proc.returncode}


def bench_a(tmp: Path, steps: int) -> None:
    print("(a) 1 worker + 1 server in two processes vs one process")
    for base, goal in (("examples/mnist/conv.conf", 1.15), ("examples/mnist/job.conf", 1.5)):
        extra = {"disp_freq": "20", "test_steps": "0", "test_freq": "0"}
        one = run(conf_for(base, "", steps, 1, extra, tmp, "a1"))["per_step"]
        two = run(conf_for(base, "server_worker_separate: true", steps, 1, extra, tmp, "a2"))["per_step"]
        r = two / one
        print(f"  {Path(base).name:10} one process {one * 1e3:7.1f} ms/step, two {two * 1e3:7.1f}"
              f" ms/step: {r:.2f}x (goal <= {goal}) {'ok' if r <= goal else 'MISSED'}")


def bench_b(tmp: Path, steps: int) -> None:
    print("(b) sync 2 workers x 1 BLAS thread vs 1 worker x 2 BLAS threads (LeNet, batch 64)")
    extra = {"disp_freq": "20", "test_steps": "0", "test_freq": "0"}
    one = run(conf_for("examples/mnist/conv.conf", "", steps, 2, extra, tmp, "b1"))["per_step"]
    two = run(conf_for("examples/mnist/conv.conf", "nworkers_per_group: 2", steps, 1, extra,
                       tmp, "b2"))["per_step"]
    r = one / two
    print(f"  1 worker {one * 1e3:.1f} ms/step, 2 workers {two * 1e3:.1f} ms/step: throughput "
          f"{r:.2f}x (goal >= 1.0) {'ok' if r >= 1.0 else 'MISSED'}; per-core efficiency {r / 2:.0%}"
          " of a perfect 2x from one core's worth")


def bench_c(n: int = 200, mb: int = 4) -> None:
    print(f"(c) round trips of {mb} MB slices over ipc://: Server vs raw ROUTER/DEALER echo")
    code = ROOT / "bench" / "_roundtrip.py"
    res = {}
    for mode in ("raw", "server"):
        out = subprocess.run([sys.executable, str(code), mode, str(n), str(mb)],
                             capture_output=True, text=True, cwd=ROOT)
        res[mode] = float(out.stdout.strip().splitlines()[-1])
    r = res["server"] / res["raw"]
    print(f"  raw {res['raw']:.0f} round trips/s, singa Server {res['server']:.0f}/s: "
          f"{r:.0%} (goal >= 80%) {'ok' if r >= 0.8 else 'MISSED'}")


def bench_d(tmp: Path) -> None:
    print("(d) time to test accuracy 0.85 on LeNet (test every 100 steps)")
    extra = {"disp_freq": "100", "test_freq": "100", "test_steps": "100"}
    rows = [("1 worker", "", 2, "0.01"),
            ("2 sync workers", "nworkers_per_group: 2", 1, "0.01"),
            ("2 async groups", "nworker_groups: 2", 1, "0.005"),
            ("2 x 2 hybrid", "nworker_groups: 2\n  nworkers_per_group: 2\n  nworkers_per_procs: 2", 1, "0.005")]
    base_t = None
    for name, cluster, threads, lr in rows:
        conf = conf_for("examples/mnist/conv.conf", cluster, 5000, threads, extra, tmp, name.replace(" ", "_"))
        conf.write_text(conf.read_text().replace("base_lr: 0.01", f"base_lr: {lr}"))
        t = run(conf, until_acc=0.85)["reached"]
        if base_t is None:
            base_t = t
        speed = f"{base_t / t:.2f}x" if t and base_t else "-"
        print(f"  {name:16} {t if t is None else round(t, 1)!s:>8} s   speed-up {speed}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--only", default="a,b,c,d")
    args = ap.parse_args()
    if not (ROOT / "examples/mnist/train_data.bin").exists():
        print("missing examples/mnist/train_data.bin: run bin/setup first", file=sys.stderr)
        return 2
    parts = set(args.only.split(","))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "a" in parts:
            bench_a(tmp, args.steps)
        if "b" in parts:
            bench_b(tmp, args.steps)
        if "c" in parts:
            bench_c()
        if "d" in parts:
            bench_d(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
