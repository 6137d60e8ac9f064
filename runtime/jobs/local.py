"""Local launcher: run every process of a job on this host.

`launch(job, conf_path)` writes the validated job (binary JobProto) into
the workspace, starts the job master, starts one `python -m runtime.node`
per process of the cluster plan, each in its own session (so that stopping
the job signals whole process groups, never processes found by name), and
waits for the job to end. Each process gets an equal share of the cores for
its BLAS threads.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conf import job_pb2
from runtime.cluster import Cluster
from runtime.jobs.master import Master


def launch(job: job_pb2.JobProto, modules: tuple[str, ...] = (), transport: str = "ipc") -> int:
    cluster = Cluster.from_proto(job.cluster)
    ws = Path(job.cluster.workspace)
    ws.mkdir(parents=True, exist_ok=True)
    job_file = ws / "job.pb"
    job_file.write_bytes(job.SerializeToString())
    master = Master(cluster.nprocs, transport)
    cores = os.cpu_count() or 1
    threads = str(max(1, min(job.num_openblas_threads, cores // cluster.nprocs)))
    env = dict(os.environ, OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads,
               MKL_NUM_THREADS=threads)
    procs = []
    for p in range(cluster.nprocs):
        cmd = [sys.executable, "-m", "runtime.node", str(job_file), str(p), master.endpoint,
               "--transport", transport]
        for m in modules:
            cmd += ["--module", m]
        procs.append(subprocess.Popen(cmd, env=env, start_new_session=True))
    code = master.serve(procs)
    if code != 0 and master.reason:
        print(f"singa: job failed: {master.reason}", file=sys.stderr, flush=True)
    return code
