"""Single-process training end to end: the loop's order and log lines, exact
resume, fine-tuning through checkpoint_path, test mode with a prediction
chain, and `singa submit` as a user runs it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conf import common_pb2
from runtime import checkpoint
from runtime.config import load_job
from runtime.io.store import open_store
from runtime.train import single
from tests.test_checkpoint import corrupt_middle

ROOT = Path(__file__).resolve().parents[1]


def write_data(path: Path, n: int, seed: int) -> None:
    """n records of 4x4 float data whose label is decided by the data."""
    rng = np.random.default_rng(seed)
    with open_store(str(path), "kvfile", "w") as st:
        for i in range(n):
            label = int(rng.integers(0, 3))
            x = rng.standard_normal(16).astype(np.float32) * 0.5
            x[label * 4:(label + 1) * 4] += 1.0
            rec = common_pb2.RecordProto(shape=[4, 4], label=label, data=x.tolist())
            st.write(b"%08d" % i, rec.SerializeToString())


CONF = """
name: "tiny"
train_steps: {steps}
test_steps: 5
test_freq: {test_freq}
disp_freq: 5
checkpoint_freq: {ckpt_freq}
seed: 7
train_one_batch {{ alg: kBP }}
updater {{
  type: {updater}
  momentum: 0.9
  weight_decay: 0.001
  learning_rate {{ type: kStep base_lr: 0.05 step_conf {{ change_freq: 7 gamma: 0.9 }} }}
}}
neuralnet {{
  layer {{
    name: "data" type: kRecordInput
    store_conf {{ backend: "kvfile" path: "train.bin" batchsize: 8 shape: 16
                 random_skip: 20 prefetching: true std_value: 2 }}
    include: kTrain
  }}
  layer {{
    name: "data" type: kRecordInput
    store_conf {{ backend: "kvfile" path: "test.bin" batchsize: 10 shape: 16 std_value: 2 }}
    include: kTest
  }}
  layer {{
    name: "ip1" type: kInnerProduct srclayers: "data"
    innerproduct_conf {{ num_output: 12 }}
    param {{ name: "w1" init {{ type: kUniform low: -0.3 high: 0.3 }} }}
    param {{ name: "b1" init {{ type: kConstant value: 0 }} }}
  }}
  layer {{ name: "relu1" type: kReLU srclayers: "ip1" }}
  layer {{ name: "drop1" type: kDropout srclayers: "relu1" dropout_conf {{ dropout_ratio: 0.2 }} }}
  layer {{
    name: "ip2" type: kInnerProduct srclayers: "drop1"
    innerproduct_conf {{ num_output: 3 }}
    param {{ name: "w2" init {{ type: kGaussian std: 0.1 }} }}
    param {{ name: "b2" lr_scale: 2 wd_scale: 0 init {{ type: kConstant value: 0 }} }}
  }}
  layer {{ name: "loss" type: kSoftmaxLoss srclayers: "ip2" srclayers: "data" }}
  {extra}
}}
cluster {{ workspace: "{workspace}" }}
"""


def make_conf(tmp: Path, name: str = "job.conf", steps: int = 20, test_freq: int = 10,
              ckpt_freq: int = 0, updater: str = "kSGD", workspace: str = "ws",
              extra: str = "") -> Path:
    if not (tmp / "train.bin").exists():
        write_data(tmp / "train.bin", 200, 1)
        write_data(tmp / "test.bin", 50, 2)
    path = tmp / name
    path.write_text(CONF.format(steps=steps, test_freq=test_freq, ckpt_freq=ckpt_freq,
                                updater=updater, workspace=workspace, extra=extra))
    return path


def run(path: Path, resume: bool = False):
    lines: list[str] = []
    job = load_job(str(path), submit=True).proto
    worker = single.train(job, resume=resume, log=lines.append)
    return worker, lines


def params_of(worker) -> dict[str, np.ndarray]:
    return {p.name: p.data.copy() for p in worker.owned_params()}


def test_loop_order_log_lines_and_checkpoints(tmp_path):
    worker, lines = run(make_conf(tmp_path, steps=20, test_freq=10, ckpt_freq=10))
    tests = [l for l in lines if l.startswith("Test @")]
    trains = [l for l in lines if l.startswith("Train @")]
    # step-0 test, a test every 10 steps, and one at train_steps
    assert [l.split("  ")[0] for l in tests] == ["Test @ step 0", "Test @ step 10", "Test @ step 20"]
    assert [l.split("  ")[0] for l in trains] == [f"Train @ step {s}" for s in (0, 5, 10, 15)]
    assert "Loss = " in trains[0] and ", accuracy = " in trains[0]
    # the step-0 test comes before the first training line
    assert lines.index(tests[0]) < lines.index(trains[0])
    files = sorted(f.name for f in (tmp_path / "ws" / "checkpoint").iterdir())
    # each file with its checksum sidecar
    assert files == sorted(f"step{n}-worker0{ext}" for n in (0, 10, 20)
                           for ext in ("", ".resume", ".sha256", ".resume.sha256"))
    saved = checkpoint.load([str(tmp_path / "ws/checkpoint/step20-worker0")])
    assert set(saved) == {"w1", "b1", "w2", "b2"}
    assert saved["w1"][1].shape == (12, 16)
    np.testing.assert_array_equal(saved["w1"][1], worker.train_net.param("w1").data)
    # every param was updated 20 times
    assert saved["w1"][0] == 20


VAL_DATA = """layer {
    name: "data" type: kRecordInput
    store_conf { backend: "kvfile" path: "test.bin" batchsize: 10 shape: 16 std_value: 2 }
    include: kVal
  }"""


@pytest.mark.parametrize("steps,tests,validations", [
    (13, [0, 5, 10, 13], [0, 4, 8, 12, 13]),   # train_steps a multiple of neither freq
    (20, [0, 5, 10, 15, 20], [0, 4, 8, 12, 16, 20]),  # of both: the final pass runs once
])
def test_final_test_and_validation_at_train_steps(tmp_path, steps, tests, validations):
    """A job with test_steps > 0 (validate_steps > 0) ends with a test
    (validation) of its final params at train_steps, once, whatever test_freq
    (validate_freq) is (README: "a test every test_freq steps, including one
    at train_steps")."""
    conf = make_conf(tmp_path, steps=steps, test_freq=5, extra=VAL_DATA)
    conf.write_text(conf.read_text().replace(
        "test_steps: 5", "test_steps: 5\nvalidate_steps: 2\nvalidate_freq: 4"))
    _, lines = run(conf)

    def steps_of(prefix: str) -> list[int]:
        return [int(l.split("  ")[0].rsplit(" ", 1)[1]) for l in lines if l.startswith(prefix)]

    assert steps_of("Test @ step") == tests
    assert steps_of("Validation @ step") == validations
    # the final pass tests the final params: after the last training step
    assert lines.index(next(l for l in lines if l.startswith(f"Test @ step {steps} "))) > \
        max(i for i, l in enumerate(lines) if l.startswith("Train @"))


@pytest.mark.parametrize("updater", ["kSGD", "kAdam"])
def test_resume_is_exact(tmp_path, updater):
    """2N steps in one go == N steps, then --resume for N more."""
    full, _ = run(make_conf(tmp_path, "full.conf", steps=24, updater=updater, workspace="ws_full"))
    make_conf(tmp_path, "half.conf", steps=12, updater=updater, workspace="ws_half")
    run(tmp_path / "half.conf")
    cont = make_conf(tmp_path, "cont.conf", steps=24, updater=updater, workspace="ws_half")
    resumed, lines = run(cont, resume=True)
    assert lines[0] == "Resumed from step 12"
    a, b = params_of(full), params_of(resumed)
    for name in a:
        assert np.max(np.abs(a[name] - b[name])) <= 1e-6, name


def test_fine_tune_loads_params_by_name(tmp_path):
    first, _ = run(make_conf(tmp_path, "a.conf", steps=10, workspace="ws_a"))
    ckpt = tmp_path / "ws_a" / "checkpoint" / "step10-worker0"
    conf = make_conf(tmp_path, "b.conf", steps=0, workspace="ws_b")
    text = conf.read_text().replace('name: "tiny"', f'name: "tiny"\ncheckpoint_path: "{ckpt}"')
    conf.write_text(text.replace("train_steps: 0", "train_steps: 1"))
    job = load_job(str(conf), submit=True).proto
    from runtime.model.updater import create_updater
    from runtime.ps.local_server import LocalServer
    from runtime.train.algorithms import create_worker

    w = create_worker(job, LocalServer(create_updater(job.updater)), log=lambda l: None)
    w.setup()
    w.init_params()
    for name, values in params_of(first).items():
        np.testing.assert_array_equal(w.train_net.param(name).data, values)
        # versions reset to job.step for fine-tuning (reset_param_version)
        assert w.train_net.param(name).version == 0
    w.close()


def test_test_mode_prediction_chain_writes_csv(tmp_path):
    run(make_conf(tmp_path, "a.conf", steps=10, workspace="ws_a"))
    ckpt = tmp_path / "ws_a" / "checkpoint" / "step10-worker0"
    out = tmp_path / "pred.csv"
    extra = f'''
  layer {{ name: "softmax" type: kSoftmax srclayers: "ip2" include: kTest }}
  layer {{ name: "argsort" type: kArgSort srclayers: "softmax" argsort_conf {{ topk: 2 }} include: kTest }}
  layer {{ name: "out" type: kCSVOutput srclayers: "argsort" store_conf {{ path: "{out}" }}
          include: kTest }}'''
    conf = make_conf(tmp_path, "t.conf", steps=10, workspace="ws_a", extra=extra)
    job = load_job(str(conf), submit=True).proto
    job.checkpoint_path.append(str(ckpt))
    lines: list[str] = []
    metrics = single.test(job, log=lines.append)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and lines[0].startswith("Test @ step 0  Loss = ")
    rows = out.read_text().splitlines()
    assert len(rows) == 5 * 10  # test_steps x batch
    first, second = rows[0].split(",")  # top-2 class indices (softmax carries no labels)
    assert {int(first), int(second)} <= {0, 1, 2} and first != second


def test_tiny_net_learns(tmp_path):
    worker, lines = run(make_conf(tmp_path, steps=150, test_freq=150))
    final = worker.metrics_log[-1]
    assert final["phase"] == "test" and final["step"] == 150
    assert final["accuracy"] >= 0.9, lines[-1]


def _singa(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "singa_cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_submit_runs_in_the_foreground_and_test_mode(tmp_path):
    conf = make_conf(tmp_path, steps=10, test_freq=5)
    r = _singa("submit", str(conf), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Test @ step 0  Loss = " in r.stdout and "Train @ step 5  Loss = " in r.stdout
    assert (tmp_path / "ws" / "checkpoint" / "step10-worker0").exists()
    # SINGA's spelling and -test on the latest checkpoint
    r = _singa("test", "-conf", str(conf), "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Test @ step 10  Loss = ")


def test_submit_from_the_singa_root_gives_the_job_absolute_paths(tmp_path):
    """`singa submit examples/tiny/job.conf` from a SINGA-style root: the
    workspace "examples/tiny/ws" is <root>/examples/tiny/ws (working
    directory first, as in SINGA), the data beside the conf is found through
    the fallback, and the job master and its processes get the paths
    resolved at submit, absolute."""
    from conf import job_pb2
    from runtime.jobs import jobdb

    root = tmp_path / "singa"
    conf_dir = root / "examples" / "tiny"
    conf_dir.mkdir(parents=True)
    conf = make_conf(conf_dir, steps=6, test_freq=3, workspace="examples/tiny/ws")
    r = _singa("submit", "examples/tiny/job.conf", cwd=root)
    assert r.returncode == 0, r.stderr
    assert "Test @ step 6  Loss = " in r.stdout
    assert (conf_dir / "ws" / "checkpoint" / "step6-worker0").exists()
    assert not (conf_dir / "examples").exists()
    with jobdb.JobDB() as reg:
        row = max(reg.jobs(), key=lambda j: j.id)
    assert row.workspace == str(conf_dir / "ws")
    job = job_pb2.JobProto.FromString((Path(row.log_dir) / "job.pb").read_bytes())
    assert job.cluster.workspace == str(conf_dir / "ws")
    assert [l.store_conf.path for l in job.neuralnet.layer if l.HasField("store_conf")] == \
        [str(conf_dir / "train.bin"), str(conf_dir / "test.bin")]
    assert conf.parent == conf_dir


def test_submit_bad_conf_exits_2_without_traceback(tmp_path):
    conf = make_conf(tmp_path)
    conf.write_text(conf.read_text().replace("num_output: 12", "num_output: -1"))
    r = _singa("submit", str(conf), cwd=tmp_path)
    assert r.returncode == 2
    assert "num_output" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "ws").exists()


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    conf = make_conf(tmp_path)
    r = _singa("submit", str(conf), "--resume", cwd=tmp_path)
    assert r.returncode == 2
    assert "--resume: no checkpoint in" in r.stderr and "Traceback" not in r.stderr


USER_LAYER = '''
"""A user's own layer, registered by user_type from outside the package."""
import numpy as np
from runtime.neuralnet.layer import Layer, layer_registry


@layer_registry.register("Scale2")
class Scale2(Layer):
    def compute_feature(self, flag, srclayers):
        self.data = 2.0 * srclayers[0].data_for(self)

    def compute_gradient(self, flag, srclayers):
        srclayers[0].set_grad(self, 2.0 * self.grad)
'''


def test_user_layer_from_a_module_file(tmp_path):
    (tmp_path / "mylayers.py").write_text(USER_LAYER)
    conf = make_conf(tmp_path, steps=6, test_freq=6)
    text = conf.read_text().replace('srclayers: "drop1"', 'srclayers: "scale"')
    text = text.replace('  layer { name: "loss"',
                        '  layer { name: "scale" user_type: "Scale2" srclayers: "drop1" }\n'
                        '  layer { name: "loss"')
    conf.write_text(text)
    r = _singa("validate", str(conf), cwd=tmp_path)
    assert r.returncode == 2 and "Scale2" in r.stderr
    r = _singa("validate", "--module", "mylayers.py", str(conf), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Scale2" in r.stdout
    r = _singa("submit", "--module", "mylayers.py", str(conf), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Test @ step 6  Loss = " in r.stdout
    r = _singa("submit", "--module", "nosuchmodule", str(conf), cwd=tmp_path)
    assert r.returncode == 2 and "--module nosuchmodule: No module named 'nosuchmodule'" in r.stderr


def test_test_mode_warns_of_params_the_checkpoint_lacks(tmp_path):
    """SINGA's char-rnn sample.conf tests a net with a param (gru2's) that
    job.conf never trained: it starts from its init method, with a warning
    that names it."""
    run(make_conf(tmp_path, "a.conf", steps=10, workspace="ws_a"))
    conf = make_conf(tmp_path, "t.conf", steps=10, workspace="ws_a")
    conf.write_text(conf.read_text().replace('name: "b2"', 'name: "b2_new"'))
    job = load_job(str(conf), submit=True).proto
    job.checkpoint_path.append(str(tmp_path / "ws_a" / "checkpoint" / "step10-worker0"))
    lines: list[str] = []
    single.test(job, log=lines.append)
    warnings = [l for l in lines if l.startswith("Warning: ")]
    assert len(warnings) == 1 and "params 'b2_new' in checkpoint_path" in warnings[0], lines
    assert "'w1'" not in warnings[0]


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize("name,damage,what", [
    ("step10-worker0", corrupt_middle, "checksum mismatch (file was changed or damaged "
                                        "after it was written); "),
    ("step10-worker0.resume", _truncate, "truncated: "),
], ids=["corrupt-params", "truncated-resume"])
def test_resume_from_a_damaged_checkpoint_fails_the_job(tmp_path, name, damage, what):
    """A damaged checkpoint never trains on: the job ends FAILED with one
    line that names the file, as its reason and the process's last line."""
    from runtime.jobs import jobdb

    conf = make_conf(tmp_path, steps=10, test_freq=10)
    # params of 13 KB, so that 5000 bytes fit in their middle
    conf.write_text(conf.read_text().replace("num_output: 12", "num_output: 200"))
    assert _singa("submit", str(conf), cwd=tmp_path).returncode == 0
    damaged = tmp_path / "ws" / "checkpoint" / name
    damage(damaged)
    conf.write_text(conf.read_text().replace("train_steps: 10", "train_steps: 20"))
    r = _singa("submit", str(conf), "--resume", cwd=tmp_path)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "Train @ step 10" not in r.stdout
    job = max((j for j in jobdb.JobDB().jobs() if j.conf_path == str(conf)), key=lambda j: j.id)
    assert job.state == jobdb.FAILED
    assert job.reason.startswith("process 0 on localhost"), job.reason
    assert f"): checkpoint {damaged}: {what}" in job.reason, job.reason
    assert f"checkpoint {damaged}: {what}" in r.stderr, r.stderr


def test_on_worker_sees_the_worker_before_it_runs(tmp_path):
    """single.train/test hand the worker they build to `on_worker` before the
    loop (the node sets its metric reporter so): no monkeypatching."""
    seen = []

    def on_worker(w):
        seen.append((w, w.step))
        w.on_report = reports.append

    reports: list[dict] = []
    conf = make_conf(tmp_path, steps=4, test_freq=2, ckpt_freq=4, workspace="ws_hook")
    worker = single.train(load_job(str(conf), submit=True).proto, log=lambda line: None,
                          on_worker=on_worker)
    assert [w for w, _ in seen] == [worker] and seen[0][1] == 0
    assert reports  # the reporter set by the hook got the run's records
    job = load_job(str(conf), submit=True).proto
    job.checkpoint_path.append(str(tmp_path / "ws_hook" / "checkpoint" / "step4-worker0"))
    seen.clear()
    single.test(job, log=lambda line: None, on_worker=on_worker)
    assert len(seen) == 1 and seen[0][0] is not worker
