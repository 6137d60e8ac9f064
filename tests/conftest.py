"""Every test runs against its own job registry: `SINGA_HOME` points into a
temporary directory for the session, never at the user's ~/.singa."""
from __future__ import annotations

import os
import signal

import pytest


@pytest.fixture(autouse=True, scope="session")
def _singa_home(tmp_path_factory):
    old = os.environ.get("SINGA_HOME")
    os.environ["SINGA_HOME"] = str(tmp_path_factory.mktemp("singa-home"))
    yield
    # a test that failed half-way may leave a job running: stop them all, so a
    # test run never leaves processes behind (pytest later deletes the registry)
    from runtime.jobs import jobdb, pgroup
    from runtime.jobs.hostfile import is_local
    from runtime.jobs.kill import kill_job

    with jobdb.JobDB() as reg:
        for job in reg.jobs(jobdb.ACTIVE):
            kill_job(reg, job.id, grace=1.0, reason="left running by the test session")
        # and a process of an ended job that outlived it (a bug the tests
        # report, which must not leave a process training on this machine)
        for job in reg.jobs():
            for p in reg.procs(job.id):
                if p.pgid and is_local(p.host or "localhost"):
                    pgroup.signal_group(p.pgid, p.start_time, signal.SIGKILL)
    if old is None:
        os.environ.pop("SINGA_HOME", None)
    else:
        os.environ["SINGA_HOME"] = old


@pytest.fixture(autouse=True)
def _cwd_is_the_test_dir(tmp_path, monkeypatch):
    """Each test runs in its own tmp_path, as a user runs `singa` from the
    directory of their job: relative paths in a job.conf resolve against the
    working directory first (as in SINGA), so a test's workspace lands in its
    tmp_path, never in the repository."""
    monkeypatch.chdir(tmp_path)
