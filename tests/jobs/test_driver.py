"""A user's own main program: it registers a layer and submits the job
through the Driver, as SINGA users did; the job runs in several processes,
which know the layer because main.py ships with the job."""
from __future__ import annotations

import subprocess
import sys

from runtime.jobs import jobdb
from tests.jobs.test_code_shipping import user_layer_conf
from tests.test_training import USER_LAYER

MAIN = USER_LAYER + '''

if __name__ == "__main__":
    import sys
    from runtime.driver import Driver
    from runtime.config import load_job

    if sys.argv[1] == "path":
        sys.exit(Driver().submit(sys.argv[2]))
    # a JobProto built in code (here: read, then changed)
    job = load_job(sys.argv[2]).proto
    job.name = "built-in-code"
    job.train_steps = 6
    sys.exit(Driver(name="from-main").submit(job))
'''


def run_main(tmp_path, how: str, conf) -> subprocess.CompletedProcess:
    (tmp_path / "main.py").write_text(MAIN)
    return subprocess.run([sys.executable, "main.py", how, str(conf)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_main_registers_a_layer_and_submits_a_conf(tmp_path):
    conf = user_layer_conf(tmp_path, "drv", "nworkers_per_group: 2")
    r = run_main(tmp_path, "path", conf)
    assert r.returncode == 0, r.stderr
    assert "Test @ step 12  Loss = " in r.stdout and "SUCCEEDED" in r.stderr
    job = jobdb.JobDB().jobs()[-1]
    assert job.options["modules"] == ["main.py"] and job.nprocs == 2


def test_main_submits_a_job_built_in_code(tmp_path):
    conf = user_layer_conf(tmp_path, "drv2", "nworkers_per_group: 2")
    r = run_main(tmp_path, "proto", conf)
    assert r.returncode == 0, r.stderr
    assert "Train @ step 5  Loss = " in r.stdout and "Train @ step 10" not in r.stdout
    job = jobdb.JobDB().jobs()[-1]
    assert job.name == "from-main" and job.train_steps == 6
