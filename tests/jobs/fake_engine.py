"""A stand-in for Open MPI's mpirun, for tests on a machine without it: it
runs every task on this host, but sets the environment the real tool sets
(OMPI_COMM_WORLD_RANK/SIZE) and keeps the command-line contract singa
relies on. (Slurm is tested for real: tests/slurm.)

    python fake_engine.py TOOL ARGS...
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ.get("FAKE_ENGINE_DIR", "/tmp/fake-engine"))


def run_tasks(n: int, argv: list[str], env_of) -> int:
    """Start n copies, forward TERM, kill the rest when one fails; exit like srun."""
    procs = [subprocess.Popen(argv, env=dict(os.environ, **env_of(i))) for i in range(n)]

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    code = 0
    while any(p.poll() is None for p in procs):
        bad = [p.returncode for p in procs if p.returncode not in (None, 0)]
        if bad and code == 0:
            code = bad[0] if bad[0] > 0 else 128 - bad[0]
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.05)
    if code == 0:
        bad = [p.returncode for p in procs if p.returncode != 0]
        code = (bad[0] if bad[0] > 0 else 128 - bad[0]) if bad else 0
    return code


def mpirun(args: list[str]) -> int:
    n, i = 1, 0
    while i < len(args) and args[i].startswith("-"):
        if args[i] == "-np":
            n = int(args[i + 1])
        i += 2  # every option here takes a value (-np, --hostfile, -x)
    return run_tasks(n, args[i:], lambda r: {"OMPI_COMM_WORLD_RANK": str(r),
                                             "OMPI_COMM_WORLD_SIZE": str(n)})


TOOLS = {f.__name__: f for f in (mpirun,)}

if __name__ == "__main__":
    sys.exit(TOOLS[sys.argv[1]](sys.argv[2:]))
