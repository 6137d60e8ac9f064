"""The engines' one error no real engine can give: not being installed.
Slurm and Open MPI themselves are tested for real (tests/slurm,
tests/engines/test_mpi.py, tests/cluster/test_mpi_multihost.py)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.jobs.test_supervision import job_conf


def test_engine_missing_is_a_clear_error(tmp_path):
    """Slurm not installed (a PATH without it): exit 2 before anything exists."""
    conf = job_conf(tmp_path, "noslurm", "nworkers_per_group: 2", steps=3)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))
    r = subprocess.run([sys.executable, "-m", "singa_cli.main", "submit", str(conf), "--launcher",
                        "slurm"], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2
    assert re.search(r"--launcher slurm: srun is not on the PATH", r.stderr)
