"""Time of `singa list --all` with 1000 jobs in the registry, against the
start-up of a bare `python -c pass` measured in the same run.

    python bench/registry_list.py [--jobs 1000] [--procs 4] [--runs 5]

Fills a temporary SINGA_HOME through the registry API: `--jobs` jobs with
`--procs` processes each, most of them ended, 20 RUNNING with a live master
(this process), so `list` reconciles real pids as it would on a busy host.
Then runs the whole command as a subprocess (python start-up included),
`--runs` times after one warm-up, and prints best and median for both, the
ratio of singa's to the baseline, and whether the goal is met.
Goal (issue 5): `singa list --all` with 1000 jobs <= 0.3 s.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL = 0.3
ACTIVE = 20


def fill(home: Path, njobs: int, nprocs: int) -> None:
    import psutil

    from runtime.jobs import jobdb

    me = psutil.Process()
    ended = [jobdb.SUCCEEDED, jobdb.FAILED, jobdb.KILLED, jobdb.LOST]
    with jobdb.JobDB(home) as reg:
        for i in range(njobs):
            hosts = [f"node{(i + p) % 8}.cluster.example.org" for p in range(nprocs)]
            job = reg.create_job(name=f"job-{i}", conf_path=f"/data/exp/{i}/job.conf",
                                 conf_text="name: 'cifar10'\n" * 40, workspace=f"/data/exp/{i}",
                                 launcher="ssh", hosts=hosts, nprocs=nprocs, train_steps=5000,
                                 secret={"curve_secret": "x" * 40})
            reg.transition(job.id, jobdb.RUNNING)
            reg.set_master(job.id, me.pid, me.create_time())
            attempt = reg.begin_attempt(job.id)
            for p, host in enumerate(hosts):
                reg.add_proc(job.id, attempt, p, host=host, role=f"worker-0-{p}",
                             log_path=f"{job.log_dir}/attempt-{attempt}/worker-0-{p}.log")
                reg.update_proc(job.id, attempt, p, pid=10000 + p, pgid=10000 + p,
                                state=jobdb.RUNNING, heartbeat=time.time(), step=i % 5000)
            reg.progress(job.id, i % 5000, loss=1.5, accuracy=0.6, samples_per_s=800.0)
            if i < njobs - ACTIVE:
                reg.transition(job.id, ended[i % len(ended)], "bench")


def timed(cmd: list[str], env: dict[str, str], runs: int) -> tuple[list[float], str]:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t)
    return times, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=4, help="processes per job")
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "singa-home"
        t = time.perf_counter()
        fill(home, a.jobs, a.procs)
        print(f"registry: {a.jobs} jobs x {a.procs} procs written in "
              f"{time.perf_counter() - t:.1f} s ({(home / 'jobs.db').stat().st_size / 1e6:.1f} MB)")
        env = dict(os.environ, SINGA_HOME=str(home))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        base, _ = timed([sys.executable, "-c", "pass"], env, a.runs)
        singa, out = timed([sys.executable, "-m", "singa_cli.main", "list", "--all"], env, a.runs)
        lines = out.count("\n")
        assert lines == a.jobs + 1, f"expected {a.jobs + 1} lines, got {lines}"
    for name, ts in (("python -c pass", base), ("singa list --all", singa)):
        print(f"{name:18s} best {min(ts) * 1e3:6.1f} ms  median {statistics.median(ts) * 1e3:6.1f} ms")
    print(f"ratio singa/python: best {min(singa) / min(base):.1f}x  "
          f"median {statistics.median(singa) / statistics.median(base):.1f}x")
    med = statistics.median(singa)
    print(f"goal: singa list --all with {a.jobs} jobs <= {GOAL:.1f} s: "
          f"{'met' if med <= GOAL else 'MISSED'} (median {med:.3f} s)")


if __name__ == "__main__":
    main()
