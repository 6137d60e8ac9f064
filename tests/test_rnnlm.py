"""The rnnlm example: user-defined layers with their own proto extension, a
word-level RNN language model on the standard library's docstrings. Its
perplexity falls during a short training (printed), its layers pass the
numeric gradient check, and its conf needs its proto and module."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime import plugins
from runtime.config.extensions import compile_proto
from tests.neuralnet.harness import Source, check_layer

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "rnnlm"


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    """The example in a directory of its own, with its corpus built there."""
    d = tmp_path_factory.mktemp("rnnlm")
    for f in ("job.conf", "rnnlm.py", "rnnlm.proto"):
        shutil.copy(EXAMPLE / f, d / f)
    r = subprocess.run([sys.executable, str(EXAMPLE / "data.py"), "--out", str(d)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len((d / "vocab.txt").read_text().splitlines()) == 2000
    return d


@pytest.fixture(scope="module")
def layers(example):
    plugins.load([str(example / "rnnlm.proto"), str(example / "rnnlm.py")])


def singa(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "singa_cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def proto_args(cwd: Path) -> list[str]:
    """`--proto rnnlm.proto`, or its compiled module while `singa submit` has no --proto."""
    if "--proto" in singa("submit", "--help", cwd=cwd).stdout:
        return ["--proto", "rnnlm.proto"]
    return ["--module", str(compile_proto(cwd / "rnnlm.proto"))]


def test_the_conf_needs_its_proto_and_module(example):
    r = singa("validate", "job.conf", cwd=example)
    assert r.returncode == 2
    body = (example / "job.conf").read_text()
    k = body.index("[rnnlm.data_conf]")
    line, col = body.count("\n", 0, k) + 1, k - body.rfind("\n", 0, k)
    assert f"job.conf:{line}:{col}: extension [rnnlm.data_conf] is not defined" in r.stderr
    r = singa("validate", "job.conf", "--proto", "rnnlm.proto", "--module", "rnnlm.py",
              cwd=example)
    assert r.returncode == 0, r.stderr
    assert "RNNLMHidden" in r.stdout


def test_perplexity_falls_during_training(example):
    text = (example / "job.conf").read_text()
    for field, value in (("train_steps", 300), ("test_steps", 8), ("test_freq", 150),
                         ("disp_freq", 100)):
        text = re.sub(rf"^{field}: \d+", f"{field}: {value}", text, flags=re.M)
    (example / "short.conf").write_text(text)
    r = singa("submit", "short.conf", *proto_args(example), "--module", "rnnlm.py", cwd=example)
    assert r.returncode == 0, r.stderr
    ppl = {(phase, int(step)): float(p) for phase, step, p in re.findall(
        r"(Train|Test) @ step (\d+)  Loss = [\d.]+, perplexity = ([\d.]+)", r.stdout)}
    test = {s: p for (ph, s), p in ppl.items() if ph == "Test"}
    train = {s: p for (ph, s), p in ppl.items() if ph == "Train"}
    print("\nrnnlm perplexity on the validation text by step:",
          ", ".join(f"{s}: {p:.1f}" for s, p in sorted(test.items())))
    print("rnnlm perplexity on the training text by step:",
          ", ".join(f"{s}: {p:.1f}" for s, p in sorted(train.items())))
    assert sorted(test) == [0, 150, 300] and sorted(train) == [0, 100, 200]
    assert test[0] > test[150] > test[300]
    assert test[300] < 0.75 * test[0]
    assert train[200] < train[0]


# ------------------------------------------------------------- gradients --
class Words(Source):
    """A stand-in for RNNLMData: steps of word indices, and the counts."""

    def __init__(self, steps: np.ndarray, counts: np.ndarray):
        super().__init__("words", steps[0])
        self.steps, self.counts, self.num_steps = steps, counts, len(steps)

    def data_at(self, k: int) -> np.ndarray:
        return self.steps[k]


def test_hidden_layer_gradients(layers):
    rng = np.random.default_rng(0)
    x, h = rng.standard_normal((3, 4)), rng.uniform(0, 1, (3, 4))
    proto = 'user_type: "RNNLMHidden" param { name: "w" init { type: kGaussian } }'
    check_layer(proto, [x, h], shape=(3, 4), nparams=1)
    check_layer(proto, [x], shape=(3, 4), nparams=1)  # copy 0: no previous state


def test_loss_layer_gradients(layers):
    rng = np.random.default_rng(1)
    vocab, steps, batch, dim = 7, 3, 2, 4
    words = Words(rng.integers(0, vocab, (steps + 1, batch)).astype(np.float32),
                  np.array([9, 6, 5, 3, 2, 2, 1], dtype=np.float64))
    hidden = [Source(f"{t}#hidden", rng.uniform(0, 1, (batch, dim))) for t in range(steps)]
    proto = ('user_type: "RNNLMLoss" [rnnlm.loss_conf] { nclass: 3 vocab_size: 7 } '
             + " ".join(f'param {{ name: "{n}" init {{ type: kGaussian }} }}'
                        for n in ("wc", "bc", "ww", "bw")))
    layer = check_layer(proto, [*hidden, words], shape=(steps, batch), nparams=4,
                        grad_srcs=range(steps), loss_layer=True, atol=2e-3)
    # classes are ranges of word indices by frequency; every word has one
    assert layer.word_class.tolist() == sorted(layer.word_class.tolist())
    assert sum(hi - lo for lo, hi in layer.bounds) == vocab
    m = layer.metrics()
    assert m["perplexity"] == pytest.approx(np.exp(m["loss"]))
