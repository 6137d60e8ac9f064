"""Time from `singa submit --detach` to the first training step of a
4-process local job (issue: cluster manager, item 10; goal <= 1.5 s).

    python bench/submit_latency.py [--runs 5]

The job is the MNIST MLP (examples/mnist/job.conf) as 2 worker groups of 2
workers, one process each, with no test pass at step 0 (so the first step
is training). The clock starts when `singa submit --detach` is started and
stops when process 0's log shows `Train @ step 0` (every step is displayed).
That covers validation, the registry, the detached master, the four
processes' start-up, the rendezvous and the first step.

Baseline, measured in the same run: one Python process that imports the
runtime, builds the same model in-process and trains one step (what the
first step costs with no platform around it). Printed: best and median of
each, their ratio, and whether the goal is met.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 1.5

BASELINE = """
import sys
from runtime.train import single
from runtime.config import load_job
job = load_job(sys.argv[1], submit=True).proto
w, s = single.build(job, log=lambda line: None)
w.init_params()
w.train_one_batch(0, w.train_net)
"""


def make_conf(tmp: Path) -> Path:
    text = (ROOT / "examples/mnist/job.conf").read_text()
    for name in ("train_data.bin", "test_data.bin"):
        text = text.replace(f'path: "{name}"', f'path: "{ROOT}/examples/mnist/{name}"')
    text = re.sub(r"^disp_freq: \d+", "disp_freq: 1", text, flags=re.M)
    text = re.sub(r"^test_steps: \d+", "test_steps: 0", text, flags=re.M)
    text = re.sub(r"^num_openblas_threads: \d+", "num_openblas_threads: 1", text, flags=re.M)
    text = re.sub(r"cluster \{.*\}\s*$", "cluster {\n  nworker_groups: 2\n  nworkers_per_group: 2\n"
                  f'  workspace: "{tmp}/ws"\n}}\n', text, flags=re.S)
    conf = tmp / "job.conf"
    conf.write_text(text)
    return conf


def submit_to_first_step(conf: Path, env: dict) -> float:
    from runtime.jobs import jobdb

    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "singa_cli.main", "submit", "--detach", str(conf)],
                       capture_output=True, text=True, env=env, check=True)
    job_id = int(re.search(r"Submitted job (\d+)", r.stdout).group(1))
    reg = jobdb.JobDB(Path(env["SINGA_HOME"]))
    log = None
    try:
        while True:
            if log is None:
                procs = reg.procs(job_id)
                log = procs[0].log_path if procs else None
            if log and os.path.exists(log) and "Train @ step 0 " in Path(log).read_text():
                return time.perf_counter() - t0
            if reg.job(job_id).terminal:
                raise RuntimeError(f"job {job_id} ended: {reg.job(job_id).reason}")
            time.sleep(0.005)
    finally:
        subprocess.run([sys.executable, "-m", "singa_cli.main", "kill", str(job_id), "--grace", "1"],
                       capture_output=True, env=env)
        reg.close()


def baseline(conf: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", BASELINE, str(conf)], check=True, cwd=ROOT,
                   env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if not (ROOT / "examples/mnist/train_data.bin").exists():
        print("no data: run bin/setup (singa data fetch) first", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="singa-bench-submit-") as d:
        tmp = Path(d)
        conf = make_conf(tmp)
        env = dict(os.environ, SINGA_HOME=str(tmp / "home"))
        base, ours = [], []
        for _ in range(args.runs):
            base.append(baseline(conf))
            ours.append(submit_to_first_step(conf, env))
    b, o = statistics.median(base), statistics.median(ours)
    print(f"baseline: one process, import + build + first step: best {min(base):.2f} s, "
          f"median {b:.2f} s")
    print(f"singa submit --detach -> first step of a 4-process job: best {min(ours):.2f} s, "
          f"median {o:.2f} s  ({o / b:.2f}x the baseline)")
    print(f"goal <= {GOAL_S} s: {'met' if o <= GOAL_S else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
