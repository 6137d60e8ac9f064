"""`singa validate`: the broken-conf corpus, the valid-conf corpus, output formats.

Each `tests/config/broken/*.conf` starts with `# expect: LINE:COL: <message
substring>` (or `# expect: <where substring>: <message substring>`): run with
`--strict`, it must exit 2, print a problem at that location containing that
message, and never a traceback. Each `tests/config/valid/*.conf` (SINGA v0.3
style) must exit 0. Both run from an empty directory, so that relative data
paths resolve against the conf's directory only.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from singa_cli.main import cli

HERE = Path(__file__).resolve().parent.parent / "config"
BROKEN = sorted((HERE / "broken").glob("*.conf"))
VALID = sorted((HERE / "valid").glob("*.conf"))


def run(*args: str):
    return CliRunner().invoke(cli, ["validate", *args])


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _expectation(path: Path) -> tuple[str, str]:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: ...'"
    spec = first[len("# expect: "):]
    m = re.match(r"^(\d+:\d+): (.*)$", spec)
    if m:
        return m.group(1), m.group(2)
    where, _, msg = spec.partition(": ")
    return where, msg


def test_corpus_is_large_enough():
    assert len(BROKEN) >= 35
    assert len(VALID) >= 10


@pytest.mark.parametrize("conf", BROKEN, ids=lambda p: p.stem)
def test_broken_conf_is_caught_at_its_location(conf: Path):
    r = run("--strict", str(conf))
    out = r.output  # stdout and stderr, interleaved
    assert "Traceback" not in out
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2, out
    where, msg = _expectation(conf)
    lines = [l for l in out.splitlines() if msg in l]
    assert lines, f"no problem line contains {msg!r}:\n{out}"
    if re.match(r"^\d+:\d+$", where):
        want = f"{conf}:{where}: "
        assert any(l.startswith(want) for l in lines), f"expected at {want!r}:\n{out}"
    else:
        assert any(where in l.split(msg)[0] for l in lines), f"expected at {where!r}:\n{out}"


@pytest.mark.parametrize("conf", VALID, ids=lambda p: p.stem)
def test_valid_conf_passes(conf: Path):
    r = run(str(conf))
    assert "Traceback" not in r.output
    assert r.exit_code == 0, r.output
    assert "valid" in r.output.splitlines()[0]


# ---------------------------------------------------------------- output ---

MLP = """
name: "tiny"
train_steps: 100
test_steps: 5
test_freq: 50
disp_freq: 10
train_one_batch { alg: kBP }
updater { type: kSGD momentum: 0.9 weight_decay: 0.0005
          learning_rate { type: kStep base_lr: 0.001 step_conf { change_freq: 60 gamma: 0.997 } } }
neuralnet {
  layer { name: "data" type: kDummy dummy_conf { input: true shape: 8 shape: 4 } }
  layer { name: "act" type: kDummy srclayers: "data" }
}
cluster { nworker_groups: 2 nworkers_per_group: 2 nservers_per_group: 2 }
"""


def test_text_output_describes_the_job(tmp_path):
    conf = tmp_path / "job.conf"
    conf.write_text(MLP)
    r = run(str(conf))
    assert r.exit_code == 0, r.output
    out = r.output
    assert "job 'tiny'" in out
    assert re.search(r"^train net: 2 layers", out, re.M)
    assert re.search(r"^\s+data\s+kDummy\s+-\s+8x4\s", out, re.M)
    assert re.search(r"^\s+act\s+kDummy\s+data\s+8x4\s", out, re.M)
    assert "kStep: 0.001 * 0.997^(step // 60)" in out
    assert "momentum 0.9" in out and "weight_decay 0.0005" in out
    assert "test every 50 steps x 5 batches and at step 100" in out  # the final test
    assert "procs 0: workers (g0,w0); servers (g0,s0)" in out
    assert "procs 1: workers (g0,w1); servers (g0,s1)" in out
    assert "procs 3: workers (g1,w1); servers none" in out
    assert "(cluster.workspace is not set: this default is created)" in out


def test_json_output_is_the_same_summary(tmp_path):
    conf = tmp_path / "job.conf"
    conf.write_text(MLP)
    r = run("--json", str(conf))
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["valid"] is True and d["name"] == "tiny"
    layers = d["phases"]["train"]["layers"]
    assert [(l["name"], l["shape"]) for l in layers] == [("data", [8, 4]), ("act", [8, 4])]
    assert d["updater"]["learning_rate"]["schedule"] == "kStep: 0.001 * 0.997^(step // 60)"
    assert d["cluster"]["nprocs"] == 4
    assert d["cluster"]["procs"][2] == {"procs": 2, "workers": [[1, 0]], "servers": []}
    assert d["workspace"] == {"path": str(tmp_path / "workspace"), "default": True}


def test_validate_prints_every_resolved_path(tmp_path, monkeypatch):
    """Each path of the job as it resolves: from the working directory first
    (as in SINGA), the conf's directory as the fallback for inputs."""
    root = tmp_path / "singa"
    (root / "examples" / "rbm").mkdir(parents=True)
    (root / "examples" / "rbm" / "beside.bin").write_bytes(b"")
    (root / "params").write_bytes(b"")
    conf = root / "examples" / "rbm" / "rbm1.conf"
    conf.write_text(
        'name: "p"\ntrain_steps: 10\ncheckpoint_path: "params"\n'
        "train_one_batch { alg: kBP }\n"
        "updater { type: kSGD learning_rate { type: kFixed base_lr: 0.1 } }\n"
        'neuralnet { layer { name: "data" type: kRecordInput store_conf { path: "beside.bin" '
        "batchsize: 4 shape: 3 } }\n"
        'layer { name: "out" type: kCSVOutput srclayers: "data" '
        'store_conf { path: "examples/rbm/out.csv" } } }\n'
        'cluster { workspace: "examples/rbm/rbm1/" }\n')
    monkeypatch.chdir(root)
    r = run("examples/rbm/rbm1.conf")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    for line in (f"  layer 'data' store_conf.path: {root}/examples/rbm/beside.bin",
                 f"  layer 'out' store_conf.path: {root}/examples/rbm/out.csv",
                 f"  checkpoint_path[0]: {root}/params",
                 f"  cluster.workspace: {root}/examples/rbm/rbm1"):
        assert line in lines, r.output
    d = json.loads(run("--json", "examples/rbm/rbm1.conf").output)
    assert {"field": "store_conf.path", "layer": "data", "missing": False,
            "path": f"{root}/examples/rbm/beside.bin"} in d["paths"]


def test_invalid_prints_every_problem_one_per_line(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text(MLP.replace("train_steps: 100", "train_steps: 0")
                    .replace('srclayers: "data"', 'srclayers: "nope"')
                    .replace("nworker_groups: 2", "nworker_groups: 3 nserver_groups: 2"))
    r = run(str(conf))
    assert r.exit_code == 2
    errors = [l for l in r.output.splitlines() if l.startswith(f"{conf}:") and "warning" not in l
              and not l.endswith("errors")]
    assert len(errors) == 3, r.output
    assert any(":3:1: train_steps must be > 0" in l for l in errors)
    assert any("unknown srclayer 'nope'" in l for l in errors)
    assert any("nworker_groups (3) must be a multiple of nserver_groups (2)" in l for l in errors)
    # and the async rate warning: 3 groups with an unscaled learning rate
    assert r.output.rstrip().endswith("3 errors, 1 warning")


def test_invalid_json(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text(MLP.replace("train_steps: 100", "train_steps: -1"))
    r = run("--json", str(conf))
    assert r.exit_code == 2
    d = json.loads(r.stdout)
    assert d["valid"] is False
    assert d["errors"][0]["where"] == f"{conf}:3:1"


def test_missing_file_exits_2_with_the_path(tmp_path):
    r = run(str(tmp_path / "nope.conf"))
    assert r.exit_code == 2
    assert "nope.conf" in r.output and "Traceback" not in r.output


def test_missing_data_is_a_warning_unless_strict(tmp_path):
    conf = tmp_path / "job.conf"
    conf.write_text(MLP.replace(
        'type: kDummy dummy_conf { input: true shape: 8 shape: 4 }',
        'type: kRecordInput store_conf { path: "data/train.bin" batchsize: 8 shape: 4 }'))
    r = run(str(conf))
    assert r.exit_code == 0, r.output
    assert "warning: layer 'data': store_conf.path: data file 'data/train.bin' not found" in r.output
    assert str(tmp_path / "data" / "train.bin") in r.output
    r = run("--strict", str(conf))
    assert r.exit_code == 2
    assert f"{conf}:11:" in r.output and "data file 'data/train.bin' not found" in r.output


def test_params_loaded_from_only_a_checkpoint_that_exists(tmp_path):
    """A checkpoint_path that is not there loads nothing: validate says so in
    its warning and does not claim 'params loaded from' it."""
    conf = tmp_path / "job.conf"
    conf.write_text(MLP + 'checkpoint_path: "ckpt/step10-worker0"\n')
    r = run(str(conf))
    assert r.exit_code == 0, r.output
    assert "checkpoint file 'ckpt/step10-worker0' not found" in r.output
    assert "params loaded from" not in r.output
    d = json.loads(run("--json", str(conf)).stdout)
    assert d["params_loaded_from"] == []
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "step10-worker0").write_bytes(b"")
    r = run(str(conf))
    assert r.exit_code == 0, r.output
    assert f"params loaded from: {tmp_path / 'ckpt' / 'step10-worker0'}" in r.output


HUGE = MLP.replace(
    'layer { name: "act" type: kDummy srclayers: "data" }',
    'layer { name: "act" type: kDummy srclayers: "data" }\n'
    '  layer { name: "fc1" type: kInnerProduct srclayers: "act"\n'
    '          innerproduct_conf { num_output: 2000000000 }\n'
    '          param { name: "w" init { type: kGaussian std: 0.01 } }\n'
    '          param { name: "b" init { type: kConstant } } }').replace(
    "cluster { nworker_groups: 2 nworkers_per_group: 2 nservers_per_group: 2 }", "").replace(
    "shape: 8 shape: 4 }", "shape: 8 shape: 4000 }")  # w: 2e9 x 4000 floats, 29 TiB


def test_a_job_too_big_for_the_host_is_an_error_at_the_layer(tmp_path):
    conf = tmp_path / "job.conf"
    conf.write_text(HUGE)
    r = run(str(conf))
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    line = next(l for l in r.output.splitlines() if "needs about" in l)
    assert line.startswith(f"{conf}:13:3: layer 'fc1' (kInnerProduct): process 0 ")
    assert " TiB (params " in line and "of memory of" in line
    # a job that fits: the estimate is in the summary and in --json
    conf.write_text(HUGE.replace("2000000000", "20"))
    r = run(str(conf))
    assert r.exit_code == 0, r.output
    assert re.search(r"^memory \(estimate, procs 0\): about [\d.]+ MiB \(params ", r.output, re.M)
    d = json.loads(run("--json", str(conf)).stdout)
    [m] = d["memory"]["procs"]
    assert m["params"] == 4 * (20 * 4000 + 20) and m["total"] > m["params"]


def test_submit_refuses_a_job_too_big_for_the_host(tmp_path, monkeypatch):
    from runtime.jobs import jobdb

    home = tmp_path / "home"
    monkeypatch.setenv("SINGA_HOME", str(home))
    conf = tmp_path / "job.conf"
    conf.write_text(HUGE)
    r = CliRunner().invoke(cli, ["submit", str(conf)])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "layer 'fc1' (kInnerProduct)" in r.output
    with jobdb.JobDB(home) as reg:
        assert reg.jobs() == []
