"""Watching training from the CLI: `singa plot`, `singa top`, `singa draw`,
on real jobs (an async job of two worker groups that has ended, and one
still running) in the session's registry."""
from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from runtime.jobs import jobdb, metrics
from singa_cli.main import COMMANDS, SingaGroup
from singa_cli.top import RateTracker, Row, Snapshot, group_rates, render, stragglers, workers_of
from tests.jobs.test_supervision import (
    ended,
    job_conf,
    nothing_left,
    singa,
    submit_detached,
    training,
    wait_for,
)
from tests.viz.test_plot import assert_png

# The verbs of this feature, as singa_cli/main.py's COMMANDS lists them.
WATCH = {
    "plot": ("singa_cli.plot:plot", "Plot a job's training and test curves to a PNG or SVG."),
    "top": ("singa_cli.top:top", "A live table of a job's processes: speed, CPU, memory."),
    "draw": ("singa_cli.draw:draw", "Draw a job's net graph or a checkpoint's filters."),
}


class Group(SingaGroup):
    lazy = {**WATCH, **COMMANDS}


@click.group(cls=Group)
def cli() -> None:
    """singa, with the watch verbs whether or not main.py lists them yet."""


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """An async job of 2 worker groups, run to its end: (job, its metrics)."""
    tmp = tmp_path_factory.mktemp("watch")
    job_id = submit_detached(job_conf(tmp, "duo", "nworker_groups: 2", steps=40))
    with jobdb.JobDB() as reg:
        job = ended(reg, job_id)
    assert job.state == jobdb.SUCCEEDED, job.reason
    return job, metrics.read(job.workspace)


def test_plot_of_an_ended_async_job_draws_its_logged_curves(done, tmp_path, monkeypatch):
    job, recs = done
    from runtime.viz import plot

    drawn = []
    real = plot.plot_metrics
    monkeypatch.setattr(plot, "plot_metrics", lambda *a, **k: drawn.append(real(*a, **k)) or drawn[-1])
    out = tmp_path / "duo.png"
    r = run("plot", job.id, "-o", out)
    assert r.exit_code == 0, r.output
    assert re.match(rf"wrote {re.escape(str(out))}: loss, accuracy, staleness_mean, "
                    r"staleness_max; 10 curves, 2 worker groups, steps 0\.\.40", r.output), r.output
    assert_png(out)
    (res,) = drawn
    assert res.title.startswith(f"tiny (job {job.id}, succeeded at step 40 of 40")
    for g in (0, 1):
        train = [x for x in recs if x["phase"] == "train" and x["group"] == g]
        line = next(l for l in res.lines
                    if l.panel == "loss by step" and l.label == f"train group {g}")
        assert line.x == [x["step"] for x in train]
        assert line.y == pytest.approx([x["loss"] for x in train])
    # async: the servers' staleness, a line per group
    stale = [l.label for l in res.lines if l.panel.startswith("staleness mean")]
    assert stale == ["group 0", "group 1"]
    test = [x for x in recs if x["phase"] == "test"]
    line = next(l for l in res.lines
                if l.panel == "accuracy by step" and l.label.startswith("test"))
    assert line.x == [x["step"] for x in test] == [0, 40]
    assert line.y == pytest.approx([x["accuracy"] for x in test])


def test_plot_options_and_its_errors(done, tmp_path, monkeypatch):
    job, recs = done
    svg = tmp_path / "lr.svg"
    r = run("plot", job.id, "--metric", "lr", "-o", svg)
    assert r.exit_code == 0, r.output
    text = svg.read_text()
    assert "lr by step" in text and f"tiny (job {job.id}" in text
    # the default file name, in the current folder; a workspace works as JOB too
    monkeypatch.chdir(tmp_path)
    r = run("plot", job.id)
    assert r.exit_code == 0 and (tmp_path / f"tiny-job{job.id}.png").exists(), r.output
    r = run("plot", job.workspace, "-o", "ws.png")
    assert r.exit_code == 0 and (tmp_path / "ws.png").exists(), r.output
    r = run("plot", job.id, "--metric", "bleu", "-o", tmp_path / "x.png")
    assert r.exit_code == 2 and "no metric 'bleu'" in r.stderr and "loss, accuracy" in r.stderr
    r = run("plot", job.id, "--norms", "-o", tmp_path / "x.png")
    assert r.exit_code == 2 and "debug: true" in r.stderr
    r = run("plot", "99999", "-o", tmp_path / "x.png")
    assert r.exit_code == 2 and "no job 99999 in the registry" in r.stderr
    r = run("plot", tmp_path / "nowhere", "-o", tmp_path / "x.png")
    assert r.exit_code == 2 and "not a job id and not a workspace folder" in r.stderr


def test_top_and_plot_of_a_running_job(tmp_path):
    conf = job_conf(tmp_path, "live", "nworker_groups: 2")
    job_id = submit_detached(conf)
    try:
        with jobdb.JobDB() as reg:
            procs = training(reg, job_id)
            ws = reg.job(job_id).workspace
        # two train records of each group give its speed before top has samples of its own
        wait_for(lambda: len(group_rates(metrics.read(ws))) == 2, 30, "both groups' train records")
        r = run("top", job_id, "--once")
        assert r.exit_code == 0, r.output
        lines = r.output.splitlines()
        assert lines[0].startswith(f"Job {job_id}: tiny  RUNNING  step ")
        header = lines[1].split()
        assert header[:8] == ["PROCS", "HOST", "PID", "ROLE", "STATE", "STEP", "STEPS/S",
                              "SAMPLES/S"]
        rows = {int(l.split()[0]): l for l in lines[2:4]}
        for p in procs:
            row = rows[p.procs_id]
            assert f" {p.pid} " in row and "RUNNING" in row, row
            speed = re.search(r"RUNNING\s+\d+\s+([\d.]+)\s+([\d.]+)\s+(\d+)%\s+(\d+) MiB"
                              r"\s+\S+s ago", row)
            assert speed, row
            steps_s, samples_s, cpu, mem = speed.groups()
            assert float(steps_s) > 0  # batch 8 per step, all of a group's in one process
            assert float(samples_s) == pytest.approx(float(steps_s) * 8, rel=0.02, abs=0.5)
            assert 10 < int(mem) < 4000
        # plot works while the job runs, with what it has logged so far
        out = tmp_path / "live.png"
        r = run("plot", job_id, "-o", out)
        assert r.exit_code == 0 and "2 worker groups" in r.output, r.output
        assert_png(out)
    finally:
        singa("kill", str(job_id), "--grace", "2", cwd=tmp_path)
    with jobdb.JobDB() as reg:
        nothing_left(reg, job_id)
        assert reg.job(job_id).state == jobdb.KILLED
    r = run("top", job_id, "--once")  # an ended job: its last table
    assert r.exit_code == 0 and f"Job {job_id}: tiny  KILLED" in r.output, r.output


def test_top_of_an_unknown_job_exits_2():
    r = run("top", "99999", "--once")
    assert r.exit_code == 2 and "no job 99999 in the registry" in r.stderr


def test_stragglers_are_slower_than_half_the_median():
    assert stragglers({0: 10.0, 1: 9.0, 2: 4.4}) == {2}
    assert stragglers({0: 10.0, 1: 9.0, 2: 5.0}) == set()
    assert stragglers({0: 10.0}) == set()  # nothing to compare with
    assert workers_of("worker 0/1, worker 1/0, server 0/0") == [(0, 1), (1, 0)]
    assert workers_of("server 0/0") == []
    recs = [{"time": 10.0, "phase": "train", "step": 0, "group": 0},
            {"time": 11.0, "phase": "train", "step": 5, "group": 0},
            {"time": 12.0, "phase": "train", "step": 15, "group": 0},
            {"time": 12.0, "phase": "test", "step": 15, "group": 0},
            {"time": 12.0, "phase": "train", "step": 5, "group": 1}]
    assert group_rates(recs) == {0: 10.0}  # the last two records; one record gives no speed


def test_rate_tracker_and_the_flagged_table():
    def proc(i: int, hb: float, step: int) -> jobdb.Proc:
        return jobdb.Proc(1, 1, i, "localhost", 100 + i, 100 + i, 0.0, f"worker {i}/0", None,
                      jobdb.RUNNING, None, None, hb, step, "")

    t = RateTracker(window_s=10)
    t.observe([proc(0, 100.0, 0), proc(1, 100.0, 0), proc(2, 100.0, 0)])
    assert t.rate(0) is None
    t.observe([proc(0, 102.0, 20), proc(1, 102.0, 18), proc(2, 102.0, 4)])
    assert [t.rate(i) for i in range(3)] == [10.0, 9.0, 2.0]
    job = jobdb.Job(1, "cifar", None, None, None, None, jobdb.RUNNING, "", 1, 0, 0.0, 0.0, None, "/ws",
                None, "local", ["localhost"], 3, 100, 20, 1.5, 0.25, None, None, None, {}, {},
                None)
    rows = [Row(proc(i, 102.0, s), t.rate(i), t.rate(i) * 8, (50.0, 300 * 2**20), i == 2)
            for i, s in enumerate((20, 18, 4))]
    text = render(Snapshot(job, rows, 9.0, 103.0))
    lines = text.splitlines()
    assert lines[0] == "Job 1: cifar  RUNNING  step 20/100  loss 1.5000  accuracy 0.2500"
    assert lines[2].split()[6:12] == ["20", "10.00", "80.0", "50%", "300", "MiB"]
    assert lines[4].rstrip().endswith("STRAGGLER") and "STRAGGLER" not in lines[3]
    assert lines[-1] == ("Stragglers (slower than half the median 9.00 steps/s): procs 2 on "
                         "localhost (2.00 steps/s)")


def test_draw_net_and_filters(done, tmp_path):
    job, _ = done
    out = tmp_path / "net.png"
    r = run("draw", "net", job.conf_path, "-o", out, "--partitions", "2",
            "--json", tmp_path / "net.json")
    assert r.exit_code == 0, r.output
    assert r.output.strip() == (f"wrote {out}: train net of tiny, 12 nodes, 12 edges, 2 partitions"
                                )
    assert_png(out)
    assert '"directed": 1' in (tmp_path / "net.json").read_text()
    r = run("draw", "net", job.id, "--phase", "test", "-o", tmp_path / "test.svg")
    assert r.exit_code == 0 and "test net of tiny, 6 nodes" in r.output, r.output
    ckpt = Path(job.workspace) / "checkpoint" / "step40-worker0"
    r = run("draw", "filters", ckpt, "--param", "w1", "-o", tmp_path / "w1.png", "--zoom", "4")
    assert r.exit_code == 0 and "filters of w1" in r.output, r.output
    assert_png(tmp_path / "w1.png")
    bad = tmp_path / "bad.conf"
    bad.write_text("name: 'x'\nneuralnet { layer { name: 'a' typo: 1 } }\n")
    r = run("draw", "net", bad, "-o", tmp_path / "bad.png")
    assert r.exit_code == 2 and re.search(r"bad\.conf:2:\d+: .*typo", r.stderr), r.stderr
    r = run("draw", "filters", ckpt, "--param", "nope", "-o", tmp_path / "n.png")
    assert r.exit_code == 2 and "has no param 'nope'" in r.stderr
    r = run("draw", "filters", tmp_path / "missing", "--param", "w1", "-o", tmp_path / "n.png")
    assert r.exit_code == 2 and "no such checkpoint file" in r.stderr
