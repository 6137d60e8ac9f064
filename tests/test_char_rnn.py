"""The char-rnn example end to end, at a tiny size: the data script, a few
BPTT steps of examples/char-rnn/job.conf (shrunk), exact resume, sampling
with examples/char-rnn/sample.conf (shrunk) through RNNDummy feedback, and
both through `singa submit` / `singa test` as a user runs them."""
from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conf import job_pb2
from runtime import checkpoint
from runtime.config import load_job
from runtime.train import single

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "char-rnn"
# the example's workspace, relative to the directory a job runs from (as in SINGA)
WS = "examples/char-rnn/workspace"
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
MODULES = "textwrap,shlex,sched"  # small: about 50 KB of code
GRU_NAMES = ["z_hx", "r_hx", "c_hx", "z_hh", "r_hh", "c_hh", "z_b", "r_b", "c_b"]


def run_data_script(out: Path, modules: str = MODULES) -> str:
    r = subprocess.run([sys.executable, str(EXAMPLE / "data.py"), "--out", str(out),
                        "--modules", modules], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    run_data_script(out)
    return out


def shrink_job(text: str, steps: int = 20) -> str:
    """examples/char-rnn/job.conf at a size that trains in a second."""
    for old, new in (("train_steps: 4000", f"train_steps: {steps}"), ("disp_freq: 100", "disp_freq: 5"),
                     ("checkpoint_freq: 1000", "checkpoint_freq: 10"),
                     ("dim_hidden: 256", "dim_hidden: 16"), ("batchsize: 32", "batchsize: 4"),
                     ("unroll_len: 50", "unroll_len: 8"), ("base_lr: 0.002", "base_lr: 0.01")):
        assert old in text, old
        text = text.replace(old, new)
    return text


def shrink_sample(text: str, steps: int = 20, chars: int = 40) -> str:
    for old, new in (("test_steps: 800", f"test_steps: {chars}"), ("dim_hidden: 256", "dim_hidden: 16"),
                     ("step4000-worker0", f"step{steps}-worker0")):
        assert old in text, old
        text = text.replace(old, new)
    return text


def setup_example(tmp: Path, corpus: Path, steps: int = 20, chars: int = 40) -> tuple[Path, Path]:
    for name in ("input.txt", "vocab.txt"):
        (tmp / name).write_bytes((corpus / name).read_bytes())
    job = tmp / "job.conf"
    job.write_text(shrink_job((EXAMPLE / "job.conf").read_text(), steps))
    sample = tmp / "sample.conf"
    sample.write_text(shrink_sample((EXAMPLE / "sample.conf").read_text(), steps, chars))
    return job, sample


def train(conf: Path, resume: bool = False):
    lines: list[str] = []
    worker = single.train(load_job(str(conf), submit=True).proto, resume=resume,
                          log=lines.append)
    return worker, lines


# ------------------------------------------------------------------ data ---
def test_data_script_builds_a_reproducible_corpus(tmp_path, corpus):
    out = run_data_script(tmp_path)
    text = (tmp_path / "input.txt").read_text()
    assert (tmp_path / "vocab.txt").read_text() == VOCAB and len(VOCAB) == 96
    assert set(text) <= set(VOCAB)
    assert text.startswith("# ---- textwrap ----\n") and "\n# ---- shlex ----\n" in text
    assert "    def " in text and "self." in text
    assert f"sha256 {hashlib.sha256(text.encode()).hexdigest()}" in out
    assert (corpus / "input.txt").read_text() == text  # the same modules, the same corpus
    assert f"ln 96 = {math.log(96):.3f}" in out


def test_the_fixed_module_set_is_python_source_here():
    spec = importlib.util.spec_from_file_location("char_rnn_data", EXAMPLE / "data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert len(mod.MODULES) >= 20
    for name in mod.MODULES:
        origin = importlib.util.find_spec(name).origin
        assert origin.endswith(".py"), name


# -------------------------------------------------------------- training ---
def test_training_steps_learn_and_checkpoint_copy_0_params(tmp_path, corpus):
    job, _ = setup_example(tmp_path, corpus, steps=20)
    worker, lines = train(job)
    trains = [r for r in worker.metrics_log if r["phase"] == "train"]
    assert [r["step"] for r in trains] == [0, 5, 10, 15]
    # the step-0 loss per character is about ln(96): a uniform guess
    assert abs(trains[0]["loss_per_step"] - math.log(96)) < 0.1
    assert trains[0]["loss"] == pytest.approx(8 * trains[0]["loss_per_step"])
    assert trains[-1]["loss_per_step"] < trains[0]["loss_per_step"] - 0.5, lines
    assert lines[0].startswith("Train @ step 0  Loss = ")
    saved = checkpoint.load([str(tmp_path / WS / "checkpoint" / "step20-worker0")])
    assert set(saved) == {f"0#{n}" for n in GRU_NAMES + ["w", "b"]}
    assert saved["0#z_hh"][0] == 20  # every step updated copy 0's params once
    np.testing.assert_array_equal(saved["0#w"][1], worker.train_net.param("5#w").data)


def test_resume_is_exact(tmp_path, corpus, monkeypatch):
    """20 steps in one go == 10 steps, then --resume for 10 more (the text
    position and RMSProp's history included)."""
    full = tmp_path / "full"
    half = tmp_path / "half"
    for d in (full, half):
        d.mkdir()
    job_full, _ = setup_example(full, corpus, steps=20)
    job_half, _ = setup_example(half, corpus, steps=10)
    # each run from its own directory: the workspace is relative to the
    # working directory, so the two jobs do not share one
    monkeypatch.chdir(full)
    a, _ = train(job_full)
    monkeypatch.chdir(half)
    train(job_half)
    job_half.write_text(job_half.read_text().replace("train_steps: 10", "train_steps: 20"))
    b, lines = train(job_half, resume=True)
    assert lines[0] == "Resumed from step 10"
    for p in a.owned_params():
        np.testing.assert_allclose(p.data, b.train_net.param(p.name).data, atol=1e-6,
                                   err_msg=p.name)


# -------------------------------------------------------------- sampling ---
def test_sampling_feeds_back_its_predictions_and_keeps_its_state(tmp_path, corpus, capsys):
    job, sample = setup_example(tmp_path, corpus, steps=20, chars=25)
    train(job)
    capsys.readouterr()
    conf = load_job(str(sample), strict=True).proto
    metrics = single.test(conf, log=print)
    out = capsys.readouterr().out
    assert metrics["phase"] == "test"
    # 25 characters, then the newline the output layer ends with
    assert len(out) == 26 and out.endswith("\n") and set(out) <= set(VOCAB)
    # the first character is a random lowercase letter (rnn_dummy_conf low 66, high 92)
    assert "a" <= out[0] <= "z"
    single.test(load_job(str(sample), strict=True).proto, log=print)
    assert capsys.readouterr().out == out  # seeded: the same sample again


def sampling_net(conf: job_pb2.JobProto):
    from runtime.neuralnet.net import NeuralNet
    from runtime.ps.local_server import LocalServer
    from runtime.train.algorithms import create_worker

    w = create_worker(conf, LocalServer(None), log=lambda line: None)
    net = w.test_net = w.train_net = NeuralNet.create(conf.neuralnet, job_pb2.kTest)
    net.set_rng(w.test_rng)
    w.init_params()
    return w, net


@pytest.mark.parametrize("greedy", [False, True])
def test_each_step_reads_back_the_last_prediction_and_state(tmp_path, corpus, greedy):
    job, sample = setup_example(tmp_path, corpus, steps=20)
    train(job)
    text = sample.read_text()
    if greedy:  # SINGA's own sample.conf: the argsort's top-1 is fed back and printed
        text = text.replace('dynamic_srclayer: "softmax"', 'dynamic_srclayer: "argsort"')
        text = text.replace('name: "sampling"', 'name: "argsort" type: kArgSort srclayers: '
                            '"softmax" }\n  layer {\n    name: "sampling"')
        text = text.replace('srclayers: "data"\n    char_rnn_conf', 'srclayers: "argsort"\n'
                            '    char_rnn_conf')
        sample.write_text(text)
    conf = load_job(str(sample), strict=True).proto
    w, net = sampling_net(conf)
    saved = checkpoint.load(list(conf.checkpoint_path))
    np.testing.assert_array_equal(net.param("0#c_hh").data, saved["0#c_hh"][1])
    out = net.layer("0#sampling")
    out.stream = open(os.devnull, "w")
    fed = "0#argsort" if greedy else "0#softmax"
    prev_top = prev_h = None
    w._test_batch = 0
    for k in range(6):
        w.test_one_batch(0, job_pb2.kTest, net)
        gru, data = net.layer("0#gru1"), net.layer("0#data")
        if k == 0:
            assert gru._h is None  # a sample starts from a zero state
        else:
            assert [s.name for s in w._feedback_sources(net, data, [])] == [fed]
            np.testing.assert_array_equal(gru._h, prev_h)
            if greedy:
                assert data.data.ravel()[0] == prev_top
        prev_h = gru.data.copy()
        if greedy:
            prev_top = net.layer("0#argsort").data.ravel()[0]
    if not greedy:  # what is printed is what is fed in, step by step
        vocab = (tmp_path / "vocab.txt").read_text()
        assert out.text[-1] == vocab[int(net.layer("0#data").data.ravel()[0])]
    assert len(out.text) == 6
    stream = out.stream
    net.close()
    stream.close()


# ------------------------------------------------------------------- CLI ---
def _singa(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "singa_cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_example_confs_validate():
    for conf in ("job.conf", "sample.conf"):
        r = _singa("validate", str(EXAMPLE / conf), cwd=ROOT)
        assert r.returncode == 0, r.stderr
        assert "valid" in r.stdout.splitlines()[0]


def test_submit_then_singa_test_prints_a_sample(tmp_path, corpus):
    job, sample = setup_example(tmp_path, corpus, steps=20, chars=30)
    r = _singa("submit", str(job), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Train @ step 15  Loss = " in r.stdout and "unrolled loss layers" in r.stdout
    assert (tmp_path / WS / "checkpoint" / "step20-worker0").exists()
    r = _singa("test", str(sample), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = r.stdout.rstrip("\n")
    assert len(text) >= 30 and set(text) <= set(VOCAB)
