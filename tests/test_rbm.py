"""CD training end to end on tiny synthetic data: the reconstruction error
falls, CD-k runs k Gibbs steps, a stacked RBM keeps the layers it loads from
a checkpoint fixed, the tied-weight autoencoder fine-tunes from the RBMs,
runs are deterministic, and the example confs validate."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conf import common_pb2, job_pb2
from runtime import checkpoint
from runtime.config import load_job
from runtime.errors import UserError
from runtime.io.store import open_store
from runtime.neuralnet.rbm_layer import RBMVisLayer
from runtime.train import single
from runtime.train.algorithms.cd import CDWorker
from runtime.train.worker import alg_registry

ROOT = Path(__file__).resolve().parents[1]
DIM = 16


def write_patterns(path: Path, n: int, seed: int) -> None:
    """n binary 4x4 images: one of 3 prototypes with 5% of the pixels flipped."""
    protos = np.array([[1, 1, 0, 0] * 4, [0, 0, 1, 1] * 4,
                       [1, 0] * 4 + [0, 1] * 4], dtype=np.float32)
    rng = np.random.default_rng(seed)
    with open_store(str(path), "kvfile", "w") as st:
        for i in range(n):
            k = int(rng.integers(0, 3))
            x = np.abs(protos[k] - (rng.random(DIM) < 0.05)).astype(np.float32)
            st.write(b"%08d" % i, common_pb2.RecordProto(shape=[DIM], label=k,
                                                         data=x.tolist()).SerializeToString())


HEAD = """
name: "{name}"
train_steps: {steps}
test_steps: 4
test_freq: {steps}
disp_freq: 20
seed: 3
{ckpt}
train_one_batch {{ alg: {alg} cd_conf {{ cd_k: {k} }} }}
updater {{ type: {updater} momentum: {momentum} weight_decay: 0.0002
           learning_rate {{ type: kFixed base_lr: {lr} }} }}
neuralnet {{
  layer {{ name: "data" type: kRecordInput include: kTrain
          store_conf {{ backend: "kvfile" path: "train.bin" batchsize: 10 shape: 16 random_skip: 10 }} }}
  layer {{ name: "data" type: kRecordInput include: kTest
          store_conf {{ backend: "kvfile" path: "test.bin" batchsize: 10 shape: 16 }} }}
{layers}
}}
cluster {{ workspace: "{ws}" }}
"""


def rbm_layers(k: int, src: str, hdim: int, gaussian: bool = False) -> str:
    g = " gaussian: true" if gaussian else ""
    return f"""
  layer {{ name: "vis{k}" type: kRBMVis srclayers: "{src}" srclayers: "hid{k}"
          rbm_conf {{ hdim: {hdim} }}
          param {{ name: "w{k}" init {{ type: kGaussian std: 0.1 }} }}
          param {{ name: "b{k}1" wd_scale: 0 init {{ type: kConstant value: 0 }} }} }}
  layer {{ name: "hid{k}" type: kRBMHid srclayers: "vis{k}" rbm_conf {{ hdim: {hdim}{g} }}
          param {{ name: "w{k}_" share_from: "w{k}" }}
          param {{ name: "b{k}2" wd_scale: 0 init {{ type: kConstant value: 0 }} }} }}"""


def inner(k: int, src: str, n: int, w: str, b: str, sigmoid: bool = True,
          transpose: bool = False, share: str = "") -> str:
    t = " transpose: true" if transpose else ""
    wp = f'param {{ name: "{w}" share_from: "{share}" }}' if share else f'param {{ name: "{w}" }}'
    s = f"""
  layer {{ name: "ip{k}" type: kInnerProduct srclayers: "{src}"
          innerproduct_conf {{ num_output: {n}{t} }} {wp} param {{ name: "{b}" }} }}"""
    if sigmoid:
        s += f'\n  layer {{ name: "sig{k}" type: kSigmoid srclayers: "ip{k}" }}'
    return s


def conf(tmp: Path, name: str, layers: str, steps: int = 100, k: int = 1, ckpt: tuple[str, ...] = (),
         alg: str = "kCD", updater: str = "kSGD", lr: float = 0.1, momentum: float = 0.8) -> Path:
    if not (tmp / "train.bin").exists():
        write_patterns(tmp / "train.bin", 300, 1)
        write_patterns(tmp / "test.bin", 40, 2)
    path = tmp / f"{name}.conf"
    path.write_text(HEAD.format(
        name=name, steps=steps, k=k, alg=alg, updater=updater, lr=lr, momentum=momentum,
        layers=layers, ws=f"ws-{name}",
        ckpt="\n".join(f'checkpoint_path: "{c}"' for c in ckpt)))
    return path


def train(path: Path):
    lines: list[str] = []
    job = load_job(str(path), submit=True).proto
    worker = single.train(job, log=lines.append)
    return worker, lines


def metrics_of_tests(worker) -> list[dict]:
    return [r for r in worker.metrics_log if r["phase"] == "test"]


def ckpt(tmp: Path, name: str, step: int) -> str:
    return str(tmp / f"ws-{name}" / "checkpoint" / f"step{step}-worker0")


# ---------------------------------------------------------------- CD ---
def test_cd_is_registered_and_reconstruction_error_falls(tmp_path):
    assert alg_registry.lookup(job_pb2.kCD, "") is CDWorker
    worker, lines = train(conf(tmp_path, "rbm1", rbm_layers(1, "data", 8), steps=150))
    first, last = metrics_of_tests(worker)
    assert first["step"] == 0 and last["step"] == 150
    assert last["squared_error"] <= 0.5 * first["squared_error"], (first, last)
    # SINGA's display line for the vis layer
    assert lines[0].startswith("Test @ step 0  Squared Error = ")
    assert any(l.startswith("Train @ step 20  Squared Error = ") for l in lines)
    saved = checkpoint.load([ckpt(tmp_path, "rbm1", 150)])
    assert set(saved) == {"w1", "b11", "b12"} and saved["w1"][1].shape == (8, DIM)


def test_runs_are_deterministic_with_the_job_seed(tmp_path):
    a, _ = train(conf(tmp_path, "a", rbm_layers(1, "data", 6), steps=30))
    b, _ = train(conf(tmp_path, "b", rbm_layers(1, "data", 6), steps=30))
    assert a.metrics_log == b.metrics_log
    for p, q in zip(a.owned_params(), b.owned_params()):
        np.testing.assert_array_equal(p.data, q.data)


def test_cd_k_runs_k_gibbs_steps_and_records_the_error_once(tmp_path, monkeypatch):
    flags: list[int] = []
    orig = RBMVisLayer.compute_feature

    def spy(self, flag, srclayers):
        if self.name == "vis1":
            flags.append(flag)
        return orig(self, flag, srclayers)

    monkeypatch.setattr(RBMVisLayer, "compute_feature", spy)
    conf_path = conf(tmp_path, "k3", rbm_layers(1, "data", 6), steps=2, k=3)
    text = conf_path.read_text().replace("test_steps: 4", "test_steps: 0")
    conf_path.write_text(text)
    train(conf_path)
    neg = job_pb2.kNegative
    per_batch = [[f & neg != 0 for f in flags[i:i + 4]] for i in (0, 4)]
    assert per_batch == [[False, True, True, True]] * 2, flags
    recorded = [bool(f & job_pb2.kTest) for f in flags if f & neg]
    assert recorded == [True, False, False] * 2


def test_cd_needs_rbm_layers_and_cd_k_at_least_1(tmp_path):
    plain = inner(1, "data", 4, "w1", "b1", sigmoid=False).replace(
        'param { name: "w1" }', 'param { name: "w1" init { type: kGaussian } }').replace(
        'param { name: "b1" }', 'param { name: "b1" init { type: kConstant } }')
    with pytest.raises(UserError, match="has no kRBMVis/kRBMHid layers; use alg: kBP"):
        train(conf(tmp_path, "norbm", plain, steps=2))
    with pytest.raises(UserError, match=r"cd_conf.cd_k must be >= 1.*got 0"):
        train(conf(tmp_path, "k0", rbm_layers(1, "data", 4), steps=2, k=0))


# ------------------------------------------------------ the small chain ---
def test_stacked_rbm_keeps_loaded_layers_fixed_and_autoencoder_fine_tunes(tmp_path):
    """rbm1 16->8, rbm2 8->4 (Gaussian hidden units) on top of rbm1's fixed
    weights, then a tied 16-8-4-8-16 autoencoder fine-tuned with BP: its test
    error after fine-tuning is below the stacked RBMs' (its step-0 test)."""
    train(conf(tmp_path, "rbm1", rbm_layers(1, "data", 8), steps=150))
    rbm1 = checkpoint.load([ckpt(tmp_path, "rbm1", 150)])
    lower = inner(1, "data", 8, "w1", "b12")
    w2, lines = train(conf(tmp_path, "rbm2", lower + rbm_layers(2, "sig1", 4, gaussian=True),
                           steps=150, lr=0.01, ckpt=[ckpt(tmp_path, "rbm1", 150)]))
    rbm2 = checkpoint.load([ckpt(tmp_path, "rbm2", 150)])
    # the layer loaded from the checkpoint is unchanged, bit for bit
    for name in ("w1", "b12"):
        np.testing.assert_array_equal(rbm2[name][1], rbm1[name][1])
    assert set(rbm2) == {"w1", "b12", "w2", "b21", "b22"}
    first, last = metrics_of_tests(w2)
    assert last["squared_error"] < first["squared_error"]

    layers = (inner(1, "data", 8, "w1", "b12") + inner(2, "sig1", 4, "w2", "b22", sigmoid=False)
              + inner(3, "ip2", 8, "w3", "b21", transpose=True, share="w2")
              + inner(4, "sig3", DIM, "w4", "b11", transpose=True, share="w1")
              + '\n  layer { name: "loss" type: kEuclideanLoss srclayers: "sig4" srclayers: "data" }')
    ae, _ = train(conf(tmp_path, "ae", layers, steps=100, alg="kBP", updater="kAdaGrad",
                       lr=0.05, momentum=0, ckpt=[ckpt(tmp_path, "rbm1", 150),
                                                  ckpt(tmp_path, "rbm2", 150)]))
    before, after = metrics_of_tests(ae)
    assert after["loss"] < before["loss"], (before, after)
    # tied: the decoder uses the encoder's matrices, and only those are saved
    saved = checkpoint.load([ckpt(tmp_path, "ae", 100)])
    assert set(saved) == {"w1", "b12", "w2", "b22", "b21", "b11"}


# -------------------------------------------------------------- CLI ---
def _singa(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "singa_cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_singa_submit_trains_an_rbm(tmp_path):
    path = conf(tmp_path, "sub", rbm_layers(1, "data", 8), steps=40)
    r = _singa("submit", str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Test @ step 0  Squared Error = " in r.stdout
    assert "Test @ step 40  Squared Error = " in r.stdout
    assert (tmp_path / "ws-sub" / "checkpoint" / "step40-worker0").exists()


@pytest.mark.parametrize("name", ["rbm1", "rbm2", "rbm3", "rbm4", "autoencoder"])
def test_example_confs_validate(name):
    r = _singa("validate", str(ROOT / "examples" / "rbm" / f"{name}.conf"), cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert f"job '{name}'" in r.stdout and "valid" in r.stdout


@pytest.mark.parametrize("cluster", [
    "nworkers_per_group: 2 nworkers_per_procs: 1",   # one group over two processes
    "nworker_groups: 2 nworkers_per_procs: 1",       # two asynchronous groups
])
def test_tied_weights_train_in_several_processes(tmp_path, cluster):
    """The hidden layer's W is the visible layer's (share_from): one param on
    the servers however the workers are placed."""
    path = conf(tmp_path, "multi", rbm_layers(1, "data", 8), steps=40)
    path.write_text(path.read_text().replace('cluster { workspace: "ws-multi" }',
                                             f'cluster {{ workspace: "ws-multi" {cluster} }}'))
    r = _singa("submit", str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    errs = [float(l.split("Squared Error = ")[1]) for l in r.stdout.splitlines()
            if l.startswith("Test @ step")]
    assert len(errs) == 2 and errs[1] < 0.8 * errs[0], r.stdout
    assert "Server (0,0): " in r.stdout
