"""Divergence: a loss, metric or update that is not finite fails the job
with a reason that says so, in one process (Driver) and in the distributed
runtime (a sync group over two processes, two async groups, servers in
processes of their own), never SUCCEEDED with "accuracy = 1"."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.config import load_job
from runtime.errors import Diverged
from runtime.jobs import jobdb
from runtime.train import single
from runtime.train.divergence import check_metrics, check_update, finite
from tests.test_distributed import conf_with
from tests.test_training import make_conf

HINT = "lower the learning rate or clip gradients"


def diverging(conf: Path, base_lr: str = "1e6", w1_lr_scale: str | None = None) -> Path:
    """`conf` with a learning rate that makes it diverge; with `w1_lr_scale`,
    w1's very first update overflows (a non-finite update while every loss
    the workers saw was finite)."""
    text = conf.read_text().replace("base_lr: 0.05", f"base_lr: {base_lr}")
    if w1_lr_scale is not None:
        text = text.replace('param { name: "w1" ', f'param {{ name: "w1" lr_scale: {w1_lr_scale} ')
    conf.write_text(text)
    return conf


def submit(conf: Path) -> tuple[subprocess.CompletedProcess, jobdb.Job]:
    r = subprocess.run([sys.executable, "-m", "singa_cli.main", "submit", str(conf)],
                       cwd=conf.parent, capture_output=True, text=True, timeout=300)
    with jobdb.JobDB() as reg:
        job = next(j for j in reversed(reg.jobs()) if j.conf_path == str(conf))
    return r, job


# --------------------------------------------------------------- the checks --
class _Layer:
    def __init__(self, name: str, **metrics: float):
        self.name, self._m = name, metrics

    def metrics(self) -> dict[str, float]:
        return self._m


class _Net:
    def __init__(self, *layers):
        self.layers = list(layers)


def test_check_metrics_names_the_metric_the_step_and_the_layer():
    check_metrics(_Net(_Layer("data"), _Layer("loss", loss=0.3, accuracy=1.0)), 5)
    with pytest.raises(Diverged) as e:
        check_metrics(_Net(_Layer("loss", loss=float("nan"), accuracy=0.0)), 100)
    assert str(e.value) == f"diverged: loss is nan at step 100 (layer 'loss'); {HINT}"
    # CD's reconstruction error, and a test pass
    with pytest.raises(Diverged, match=r"^diverged: test squared error is inf at step 7 "
                                       r"\(layer 'vis'\)"):
        check_metrics(_Net(_Layer("vis", squared_error=float("inf"))), 7, "test")


def test_finite_and_check_update():
    assert finite(np.ones(10, np.float32))
    # huge but finite values overflow a float32 sum: still finite
    assert finite(np.full(10, 3e38, np.float32))
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones(1000, np.float32)
        x[517] = bad
        assert not finite(x)
        with pytest.raises(Diverged, match=rf"^diverged: update of param 'w1' is not finite at "
                                           rf"version 4; {HINT}$"):
            check_update("w1", 4, x)


# ------------------------------------------------------------ one process --
def test_a_diverging_loss_stops_training_at_its_step(tmp_path):
    conf = diverging(make_conf(tmp_path, steps=40, test_freq=40))
    lines: list[str] = []
    message = rf"^diverged: loss is nan at step (\d+) \(layer 'loss'\); {HINT}$"
    with pytest.raises(Diverged, match=message) as e:
        single.train(load_job(str(conf), submit=True).proto, log=lines.append)
    step = int(re.search(r"step (\d+)", str(e.value)).group(1))
    assert step < 40
    # no line before it reports a perfect accuracy with a nan loss
    assert not any("nan" in l for l in lines), lines


def test_a_non_finite_last_update_fails_the_job_in_one_process(tmp_path):
    """The only step's update overflows: no later loss sees it, the final
    params do. (In one process the worker's checks are the only ones: a
    check of every update would cost the fast path a pass over every param
    per step.)"""
    conf = diverging(make_conf(tmp_path, steps=1, test_freq=0), base_lr="1e38", w1_lr_scale="1e30")
    with pytest.raises(Diverged, match=rf"^diverged: param 'w1' is not finite after step 1; {HINT}$"):
        single.train(load_job(str(conf), submit=True).proto, log=lambda l: None)
    # and with a step after it, that step's loss
    conf = diverging(make_conf(tmp_path, "two.conf", steps=2, test_freq=0, workspace="ws2"),
                     base_lr="1e38", w1_lr_scale="1e30")
    with pytest.raises(Diverged, match=r"^diverged: loss is nan at step 1 \(layer 'loss'\)"):
        single.train(load_job(str(conf), submit=True).proto, log=lambda l: None)


def test_a_diverging_job_ends_failed_with_the_reason(tmp_path):
    conf = diverging(make_conf(tmp_path, "single.conf", steps=40, test_freq=40))
    r, job = submit(conf)
    assert r.returncode == 1
    assert job.state == jobdb.FAILED, job.reason
    with jobdb.JobDB() as reg:
        proc = reg.procs(job.id)[0]
    assert re.fullmatch(rf"process 0 on localhost, pid {proc.pid} \(worker 0/0, server 0/0\): "
                        rf"diverged: loss is nan at step \d+ \(layer 'loss'\); {HINT}",
                        job.reason), job.reason
    assert f"FAILED: {job.reason}" in r.stderr
    assert "accuracy = 1.000000" not in r.stdout


# ------------------------------------------------------- several processes --
@pytest.mark.parametrize("cluster", ["nworkers_per_group: 2",      # a sync group over 2 processes
                                     "nworker_groups: 2"])         # 2 async groups (Downpour-like)
def test_a_diverging_distributed_job_ends_failed(tmp_path, cluster):
    conf = diverging(conf_with(tmp_path, "dist.conf", cluster, steps=40))
    r, job = submit(conf)
    assert r.returncode == 1, r.stderr
    assert job.state == jobdb.FAILED, job.reason
    # a worker's loss, or the update its servers applied: whichever saw it first
    assert re.fullmatch(rf"process \d on localhost, pid \d+ \(worker \d/\d(, server 0/0)?\): "
                        rf"diverged: (loss is nan at step \d+ \(layer 'loss'\)|update of param "
                        rf"'\w+' is not finite at version \d+); {HINT}", job.reason), job.reason


def test_a_non_finite_update_fails_the_servers_process(tmp_path):
    """Servers in a process of their own: an update overflows (w1's first,
    scaled by 1e30, or another param's when two async groups race) before any
    worker could see a bad loss; the server's process fails."""
    conf = diverging(conf_with(tmp_path, "sep.conf", "nworker_groups: 2 server_worker_separate: true",
                               steps=40), base_lr="1e38", w1_lr_scale="1e30")
    r, job = submit(conf)
    assert r.returncode == 1, r.stderr
    assert job.state == jobdb.FAILED, job.reason
    assert re.fullmatch(rf"process 2 on localhost, pid \d+ \(server 0/0\): diverged: update of "
                        rf"param '\w+' is not finite at version \d+; {HINT}", job.reason), job.reason
