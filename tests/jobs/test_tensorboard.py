"""TensorBoard event files (runtime/jobs/tensorboard.py), read back with
TensorBoard's own reader: every scalar of the metrics stream, per worker
group, at its step and wall time; from the MetricsWriter sink the job master
uses, from a real job, and a sink that fails never stops the metrics."""
from __future__ import annotations

import logging
import os
import stat
import sys
from pathlib import Path

import pytest

from runtime.jobs import jobdb, metrics
from runtime.jobs import tensorboard as TB
from tests.jobs.test_supervision import ended, job_conf, submit_detached
from tests.viz.test_plot import async_records

ROOT = Path(__file__).resolve().parents[2]


def accumulate(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: keep every event
    ea.Reload()
    return ea


def scalars(ea, tag: str) -> list[tuple[int, float, float]]:
    return [(e.step, e.value, e.wall_time) for e in ea.Scalars(tag)]


def test_scalars_of_each_record():
    assert TB.scalars({"time": 1.0, "phase": "train", "step": 5, "group": 1, "worker": 0,
                       "loss": 0.5, "accuracy": 0.25, "lr": 0.1, "samples_per_s": 80.0}) == [
        ("train/loss", 0.5, 5), ("train/accuracy", 0.25, 5), ("train/lr", 0.1, 5),
        ("train/samples_per_s", 80.0, 5)]
    assert TB.scalars({"time": 1.0, "phase": "server", "group": 0, "server": "1/2", "updates": 40,
                       "staleness_mean": 0.5, "staleness_max": 2}) == [
        ("server1.2/updates", 40.0, 40), ("server1.2/staleness_mean", 0.5, 40),
        ("server1.2/staleness_max", 2.0, 40)]
    # nothing to draw: no step, a string, NaN
    assert TB.scalars({"phase": "train", "loss": 1.0}) == []
    assert TB.scalars({"phase": "test", "step": 0, "note": "x", "loss": float("nan")}) == []


def test_the_sink_on_a_metrics_writer_writes_what_tensorboard_reads(tmp_path):
    writer = metrics.MetricsWriter(tmp_path)
    sink = TB.TensorBoardSink(tmp_path)
    writer.add_sink(sink)  # as the job master does
    recs = [writer.add(r) for r in async_records()]
    writer.close()
    sink.close()
    runs = sorted(p.name for p in (tmp_path / "tensorboard").iterdir())
    assert runs == ["group0", "group1"]
    for g in (0, 1):
        ea = accumulate(tmp_path / "tensorboard" / f"group{g}")
        tags = set(ea.Tags()["scalars"])
        assert {"train/loss", "train/accuracy", "train/lr", "train/samples_per_s",
                "server0.0/staleness_mean", "server0.0/staleness_max"} <= tags
        train = [r for r in recs if r["phase"] == "train" and r["group"] == g]
        got = scalars(ea, "train/loss")
        assert [s for s, _, _ in got] == [r["step"] for r in train]
        assert [v for _, v, _ in got] == pytest.approx([r["loss"] for r in train], rel=1e-6)
        assert [t for _, _, t in got] == pytest.approx([r["time"] for r in train], abs=1e-3)
        srv = [r for r in recs if r["phase"] == "server" and r["group"] == g]
        assert [v for _, v, _ in scalars(ea, "server0.0/staleness_mean")] == \
            [r["staleness_mean"] for r in srv]
    # the test curve is group 0's
    ea0 = accumulate(tmp_path / "tensorboard" / "group0")
    assert len(scalars(ea0, "test/accuracy")) == 3


def test_metrics_and_event_files_are_private_under_a_permissive_umask(tmp_path):
    """0600 files in 0700 folders, like the rest of the workspace (checkpoints,
    visualization), whatever the umask; a metrics.jsonl an older singa made 0644
    is made 0600 too."""
    (tmp_path / metrics.FILE).write_text("")
    os.chmod(tmp_path / metrics.FILE, 0o644)
    old = os.umask(0o022)
    try:
        writer = metrics.MetricsWriter(tmp_path)
        sink = TB.TensorBoardSink(tmp_path)
        writer.add_sink(sink)
        for r in async_records():
            writer.add(r)
        writer.close()
        sink.close()
    finally:
        os.umask(old)
    made = [tmp_path / metrics.FILE, *(tmp_path / "tensorboard").rglob("*")]
    assert len(made) >= 5 and any(p.name.startswith("events.out") for p in made)
    assert {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in made} == {
        str(p.relative_to(tmp_path)): "0o700" if p.is_dir() else "0o600" for p in made}


def test_a_broken_sink_goes_quiet_and_the_metrics_stream_goes_on(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails
    writer = metrics.MetricsWriter(tmp_path)
    writer.add_sink(TB.TensorBoardSink(tmp_path))
    with caplog.at_level(logging.WARNING, logger="singa.tensorboard"):
        for r in async_records()[:10]:
            writer.add(r)
    writer.close()
    assert len(metrics.read(tmp_path)) == 10
    warnings = [r for r in caplog.records if "TensorBoard event files" in r.getMessage()]
    assert len(warnings) == 1 and "tensorboardX is not installed" in warnings[0].getMessage()


def test_a_real_async_jobs_metrics_in_tensorboard(tmp_path):
    """A 2-group async job: its event files (written live by the job master's
    sink, or exported from metrics.jsonl where the master does not register
    the sink) hold each group's train curve and the servers' staleness."""
    conf = job_conf(tmp_path, "tb", "nworker_groups: 2", steps=40)
    job_id = submit_detached(conf)
    with jobdb.JobDB() as reg:
        job = ended(reg, job_id)
    assert job.state == jobdb.SUCCEEDED, job.reason
    ws = Path(job.workspace)
    recs = metrics.read(ws)
    if not (ws / "tensorboard").exists():
        assert "TensorBoardSink" not in (ROOT / "runtime/jobs/master.py").read_text(), \
            "the master registers the sink but wrote no event files"
        assert TB.main([str(ws)]) == 0
    for g in (0, 1):
        ea = accumulate(ws / "tensorboard" / f"group{g}")
        train = [r for r in recs if r["phase"] == "train" and r["group"] == g]
        assert train, g
        got = scalars(ea, "train/loss")
        assert [s for s, _, _ in got] == [r["step"] for r in train]
        assert [v for _, v, _ in got] == pytest.approx([r["loss"] for r in train], rel=1e-6)
        assert "server0.0/staleness_mean" in ea.Tags()["scalars"]
        assert scalars(ea, "server0.0/updates")[-1][0] == 4 * 40  # 4 param slices x 40 steps


def test_export_without_records_says_so(tmp_path, capsys):
    assert TB.main([str(tmp_path)]) == 2
    assert "no metrics.jsonl records" in capsys.readouterr().err


def test_the_sink_does_not_import_pytorch(tmp_path):
    """tensorboardX would import an installed PyTorch: seconds of CPU in a
    job master that must answer heartbeats (20 jobs at once on 2 cores then
    lost their masters). Here a stand-in `torch` records being imported."""
    import subprocess

    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    marker = tmp_path / "imported"
    (fake / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\nTensor = object\n")
    code = ("import sys\n"
            "from runtime.jobs import tensorboard as TB\n"
            f"sink = TB.TensorBoardSink({str(tmp_path / 'ws')!r})\n"
            "sink({'step': 1, 'phase': 'train', 'group': 0, 'loss': 0.5})\n"
            "sink.close()\n"
            "import os\n"
            f"print('torch imported' if os.path.exists({str(marker)!r}) else 'clean')\n"
            "import torch\n"  # a later import of it still works
            "print('ok')\n")
    env = {**__import__("os").environ, "PYTHONPATH": f"{tmp_path / 'site'}"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "ws").rglob("events.out.tfevents.*")), "no event file"
    assert r.stdout.split() == ["clean", "ok"] and marker.exists()
