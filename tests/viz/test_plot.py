"""Training curves (runtime/viz/plot.py) and the per-layer norms of
`debug: true` (runtime/train/debug.py): what is drawn is what was logged, one line
per worker group, and the pictures are valid PNG/SVG files with titles,
axis labels and legends."""
from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import UserError
from runtime.train import debug
from runtime.viz.plot import curves, default_metrics, metric_names, plot_metrics, plot_norms

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> tuple[int, int]:
    """The (width, height) of a PNG that Pillow decodes in full."""
    from PIL import Image

    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()  # decodes every pixel: a truncated file fails here
        return im.size


def async_records(steps: int = 60, disp: int = 5) -> list[dict]:
    """A metrics stream of a 2-group async job, as the job master writes it."""
    recs, t = [], 1_700_000_000.0
    for step in range(0, steps, disp):
        for g in (0, 1):
            t += 0.25 + 0.1 * g
            recs.append({"time": round(t, 3), "phase": "train", "step": step, "group": g,
                         "worker": 0, "loss": round(1.1 * math.exp(-step / 30) + 0.03 * g, 6),
                         "accuracy": round(1 - math.exp(-step / 20), 6), "lr": 0.05,
                         "samples_per_s": 100.0 + g})
        if step % 20 == 0:
            recs.append({"time": round(t, 3), "phase": "test", "step": step, "group": 0,
                         "worker": 0, "loss": 0.9 * math.exp(-step / 30), "accuracy": 0.5})
        for g in (0, 1):
            recs.append({"time": round(t, 3), "phase": "server", "group": g, "server": "0/0",
                         "updates": 4 * step, "staleness_mean": 0.5 + g, "staleness_max": 2 + g})
    return recs


def by(lines, panel: str, label: str):
    found = [l for l in lines if l.panel == panel and l.label == label]
    assert len(found) == 1, (panel, label, [(l.panel, l.label) for l in lines])
    return found[0]


def test_curves_drawn_are_the_logged_values_one_line_per_group(tmp_path):
    recs = async_records()
    out = tmp_path / "curves.png"
    res = plot_metrics(recs, out, "tiny (job 3)")
    t0 = recs[0]["time"]
    for g in (0, 1):
        train = [r for r in recs if r["phase"] == "train" and r["group"] == g]
        for metric in ("loss", "accuracy"):
            step_line = by(res.lines, f"{metric} by step", f"train group {g}")
            assert step_line.xlabel == "step"
            assert step_line.x == [r["step"] for r in train]
            assert step_line.y == pytest.approx([r[metric] for r in train])
            time_line = by(res.lines, f"{metric} by wall time", f"train group {g}")
            assert time_line.xlabel == "wall time (s)"
            assert time_line.x == pytest.approx([r["time"] - t0 for r in train])
            assert time_line.y == pytest.approx([r[metric] for r in train])
    test = [r for r in recs if r["phase"] == "test"]
    assert by(res.lines, "loss by step", "test group 0").y == \
        pytest.approx([r["loss"] for r in test])
    # async: the servers' staleness, one line per group
    for g in (0, 1):
        line = by(res.lines, "staleness mean of updates (versions)", f"group {g}")
        assert set(line.y) == {0.5 + g}
    assert res.title == "tiny (job 3)"
    w, h = assert_png(out)
    assert w >= 800 and h >= 600


def test_a_one_group_job_has_plain_labels_and_no_staleness_row(tmp_path):
    recs = [r for r in async_records() if r.get("group", 0) == 0]
    for r in recs:
        if r["phase"] == "server":
            r["staleness_max"] = 0
    res = plot_metrics(recs, tmp_path / "one.svg", "one")
    assert {l.label for l in res.lines} == {"train", "test"}
    assert {l.panel for l in res.lines} == {"loss by step", "loss by wall time",
                                            "accuracy by step", "accuracy by wall time"}
    root = ET.parse(tmp_path / "one.svg").getroot()
    assert root.tag.endswith("svg")
    assert "loss by step" in (tmp_path / "one.svg").read_text()


def test_metric_choice_and_errors(tmp_path):
    recs = async_records()
    assert metric_names(recs) == ["loss", "accuracy", "lr", "samples_per_s", "staleness_mean",
                                  "staleness_max", "updates"]
    assert default_metrics(recs) == ["loss", "accuracy"]
    res = plot_metrics(recs, tmp_path / "lr.png", "t", ["samples_per_s"])
    assert {l.panel for l in res.lines} == {"samples_per_s by step", "samples_per_s by wall time"}
    assert by(res.lines, "samples_per_s by step", "train group 1").y[0] == 101.0
    with pytest.raises(UserError, match=r"no metric 'perplexity'.*it has: loss, accuracy, lr"):
        plot_metrics(recs, tmp_path / "x.png", "t", ["perplexity"])
    with pytest.raises(UserError, match="no train or test records"):
        plot_metrics([], tmp_path / "x.png", "t")
    with pytest.raises(UserError, match=r"suffix '\.jpeg'.*\.png, \.svg"):
        plot_metrics(recs, tmp_path / "x.jpeg", "t")
    with pytest.raises(UserError, match="does not exist"):
        plot_metrics(recs, tmp_path / "nope" / "x.png", "t")
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file is left behind"


def test_curves_skip_torn_and_non_numeric_values():
    recs = async_records()[:6] + [{"time": 5.0, "phase": "train", "step": "x", "loss": 1.0},
                                  {"time": 5.0, "phase": "train", "step": 9, "loss": float("nan")}]
    got = curves(recs, "loss")
    assert [(c.phase, c.group, len(c.values)) for c in got] == [("train", 0, 2), ("train", 1, 1),
                                                                 ("test", 0, 1)]


# -- debug: true -------------------------------------------------------------------------------

@pytest.fixture
def debug_run(tmp_path, monkeypatch):
    """A real training run with the two calls the worker makes when `debug: true`."""
    from runtime.config import load_job
    from runtime.train import single
    from runtime.train.worker import Worker
    from tests.test_training import make_conf

    setup, display = Worker.setup, Worker.display

    def debug_setup(self):
        setup(self)
        debug.watch(self.train_net)

    def debug_display(self, step):
        debug.write(self.train_net, step, self.job.cluster.workspace, group=self.grp_id,
                    worker=self.id)
        return display(self, step)

    monkeypatch.setattr(Worker, "setup", debug_setup)
    monkeypatch.setattr(Worker, "display", debug_display)
    conf = make_conf(tmp_path, steps=16, test_freq=16)  # step 15: display and last
    worker = single.train(load_job(str(conf), submit=True).proto, log=lambda line: None)
    return tmp_path / "ws", worker


def test_debug_norms_are_written_at_display_steps_and_plottable(debug_run, tmp_path):
    ws, worker = debug_run
    recs = debug.read(ws)
    assert sorted({r["step"] for r in recs}) == [0, 5, 10, 15]  # disp_freq 5
    layers = [l.name for l in worker.train_net.layers]
    assert [r["layer"] for r in recs if r["step"] == 15] == layers
    last = {r["layer"]: r for r in recs if r["step"] == 15}
    # the data layer has no gradient; the others have theirs, and the params both
    assert "grad" not in last["data"] and last["data"]["data"] > 0
    for name in ("ip1", "relu1", "ip2"):
        assert last[name]["grad"] > 0, name
    assert set(last["ip1"]["params"]) == {"w1", "b1"}
    assert last["ip1"]["params"]["w1"]["grad"] > 0
    # mean |x| of what the net holds after the last display step's batch
    ip1 = worker.train_net.layer("ip1")
    assert last["ip1"]["data"] == pytest.approx(float(np.abs(ip1.data).mean()), rel=1e-6)
    # SINGA's files: the net as nodes and links, labelled with the norms
    vis = ws / "visualization"
    fp = json.loads((vis / "fp-step15-loc0.json").read_text())
    bp = json.loads((vis / "bp-step15-loc0.json").read_text())
    assert fp["directed"] == 1 and [n["id"] for n in fp["nodes"]] == layers
    assert {"source": 0, "target": 1} in fp["links"]
    assert fp["nodes"][1]["label"].startswith("ip1  data:") and " w1:" in fp["nodes"][1]["label"]
    assert bp["nodes"][1]["label"].startswith("ip1  grad:")
    # plottable: one line per layer, the values as recorded
    res = plot_norms(recs, tmp_path / "norms.png", "tiny: per-layer norms")
    line = by(res.lines, "layer gradient: mean |x| by step", "ip1")
    assert line.x == [0, 5, 10, 15]
    assert line.y == pytest.approx([r["grad"] for r in recs if r["layer"] == "ip1"])
    assert by(res.lines, "param gradient: mean |x| by step", "w2").x == [0, 5, 10, 15]
    assert_png(tmp_path / "norms.png")


def test_norms_of_a_net_without_watch_and_empty_errors(tmp_path):
    class P:
        name, data, grad = "w", np.array([[1.0, -3.0]]), None

    class L:
        def __init__(self, name, data, grad, params=()):
            self.name, self.data, self.grad, self.params = name, data, grad, list(params)
            self.is_input = name == "in"

    class Net:
        layers = [L("in", np.array([-2.0, 2.0]), None), L("fc", np.zeros(3), np.ones(3), [P()])]

        def srclayers(self, layer):
            return [self.layers[0]] if layer.name == "fc" else []

    assert debug.layer_norms(Net()) == [
        {"layer": "in", "data": 2.0},
        {"layer": "fc", "data": 0.0, "grad": 1.0, "params": {"w": {"data": 2.0}}}]
    with pytest.raises(UserError, match="debug: true"):
        plot_norms([], tmp_path / "n.png", "t")


def test_a_server_metric_is_drawn_against_the_updates_it_counts(tmp_path):
    recs = async_records()
    res = plot_metrics(recs, tmp_path / "s.png", "t", ["staleness_max"])
    line = by(res.lines, "staleness_max by updates applied", "group 1")
    srv = [r for r in recs if r["phase"] == "server" and r["group"] == 1]
    assert line.xlabel == "updates applied (per group)"
    assert line.x == [r["updates"] for r in srv] and line.y == [r["staleness_max"] for r in srv]
