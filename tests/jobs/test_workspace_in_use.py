"""Two jobs on one workspace, with real `singa submit` processes: the registry
is the lock, so of submits made at the same moment exactly one runs and each
other is refused before anything starts (exit 2, naming the job)."""
from __future__ import annotations

import re
import subprocess
import sys

from runtime.jobs import jobdb
from tests.jobs.test_supervision import ended, job_conf, nothing_left, reg, singa  # noqa: F401


def test_concurrent_submits_on_one_workspace_run_one_job(tmp_path, reg):
    ws = tmp_path / "shared.ws"
    confs = [job_conf(tmp_path, f"twin{i}", steps=10**6, workspace=str(ws)) for i in range(3)]
    runs = [subprocess.Popen([sys.executable, "-m", "singa_cli.main", "submit", "--detach", str(c)],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for c in confs]
    results = [(p.wait(timeout=120), *p.communicate()) for p in runs]
    ok = [out for rc, out, _ in results if rc == 0]
    assert len(ok) == 1, results
    job_id = int(re.search(r"Submitted job (\d+)", ok[0]).group(1))
    job = reg.job(job_id)
    for rc, out, err in results:
        if rc == 0:
            continue
        assert rc == 2 and out == "", (rc, out, err)
        assert re.fullmatch(
            rf"singa: workspace {ws} is in use by job {job_id} \({job.name}, (PENDING|RUNNING)\); "
            rf"wait for it, kill it \(singa kill {job_id}\), or set another workspace\n", err), err
    # nothing half-done: one row for the three confs, and no traceback
    mine = [j for j in reg.jobs() if j.conf_path in {str(c) for c in confs}]
    assert [j.id for j in mine] == [job_id]
    # the workspace is free again once that job has ended
    r = singa("kill", str(job_id), "--grace", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    nothing_left(reg, job_id)
    again = job_conf(tmp_path, "after", steps=5, workspace=str(ws))
    r = singa("submit", "--detach", str(again), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    after = int(re.search(r"Submitted job (\d+)", r.stdout).group(1))
    assert ended(reg, after).state == jobdb.SUCCEEDED
    nothing_left(reg, after)
