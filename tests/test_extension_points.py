"""The extension points: one registration call each (Layer, Updater,
learning-rate generator, param init method, TrainOneBatch algorithm); a
name registered twice, or a class without a method it must define, is an
error when it is registered, naming the methods. And the user-updater
example: an updater from a file outside the package trains a job of two
processes, here and across network-namespace hosts."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conf import job_pb2
from runtime import plugins
from runtime.errors import UserError
from runtime.model.lr import LRGen, create_lr, lr_registry
from runtime.model.param_init import generate, init_registry
from runtime.model.updater import Updater, create_updater, updater_registry
from runtime.neuralnet.layer import Layer, layer_registry
from runtime.registry import Registry, is_stub, missing_methods
from runtime.train.worker import Worker, alg_registry

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "user-updater"


# ------------------------------------------------------ one call each, works --
def test_each_extension_point_has_one_registration_call():
    @plugins.register_layer("XpTwice")
    class Twice(Layer):
        def compute_feature(self, flag, srclayers):
            self.data = 2 * srclayers[0].data_for(self)

        def compute_gradient(self, flag, srclayers):
            srclayers[0].set_grad(self, 2 * self.grad)

    @plugins.register_updater("XpPlain")
    class Plain(Updater):
        def rule(self, w, g, lr, hist):
            w -= lr * g

    @plugins.register_lr("XpHalf")
    class Half(LRGen):
        def get(self, step):
            return self.base_lr / 2

    @plugins.register_init("XpSeven")
    def seven(proto, shape, rng):
        return np.full(shape, 7.0)

    @plugins.register_alg("XpAlg")
    class Alg(Worker):
        def train_one_batch(self, step, net):
            pass

        def test_one_batch(self, step, phase, net):
            pass

    assert layer_registry.lookup(job_pb2.kUserLayer, "XpTwice") is Twice
    upd = create_updater(job_pb2.UpdaterProto(
        user_type="XpPlain", learning_rate=job_pb2.LRGenProto(user_type="XpHalf", base_lr=0.5)))
    assert isinstance(upd, Plain) and upd.lr_gen.get(3) == 0.25
    w = np.ones(3, np.float32)
    upd.apply(0, "w", w, np.full(3, 2, np.float32))
    np.testing.assert_allclose(w, 0.5)  # 1 - 0.25 * 2
    np.testing.assert_array_equal(
        generate(job_pb2.ParamGenProto(user_type="XpSeven"), (2, 2), np.random.default_rng()),
        np.full((2, 2), 7, np.float32))
    assert alg_registry.lookup(job_pb2.kUserAlg, "XpAlg") is Alg
    # the same registries as the base classes' modules use
    assert plugins.register_updater.__module__ == "runtime.model.updater"
    assert create_lr(job_pb2.LRGenProto(user_type="XpHalf", base_lr=1)).get(0) == 0.5


# ------------------------------------------------------------ registration errors --
def layer_without_gradient():
    class NoGrad(Layer):
        def compute_feature(self, flag, srclayers):
            pass
    return NoGrad


def worker_without_test():
    class NoTest(Worker):
        def train_one_batch(self, step, net):
            pass
    return NoTest


def updater_without_rule():
    class NoRule(Updater):
        slots = ("m",)
    return NoRule


def plain_updater_half_done():
    class Half:
        def __init__(self, proto):
            pass

        def update(self, step, param, grad_scale=1.0):
            pass
    return Half


def lr_without_get():
    class NoGet(LRGen):
        pass
    return NoGet


@pytest.mark.parametrize("call,make,missing", [
    ("register_layer", layer_without_gradient, "compute_gradient"),
    ("register_layer", lambda: type("Bare", (), {}), "setup, compute_feature, compute_gradient"),
    ("register_alg", worker_without_test, "test_one_batch"),
    ("register_updater", updater_without_rule, "rule"),
    ("register_updater", plain_updater_half_done, "apply, state, load_state"),
    ("register_lr", lr_without_get, "get"),
])
def test_a_class_without_its_methods_is_refused_at_registration(call, make, missing):
    name = f"XpMissing_{call}_{make.__name__}"
    cls = make()
    with pytest.raises(UserError) as e:
        getattr(plugins, call)(name)(cls)
    assert f"it lacks the method(s) {missing}" in str(e.value)
    assert repr(cls.__qualname__) in str(e.value) and repr(name) in str(e.value)
    for reg in (layer_registry, alg_registry, updater_registry, lr_registry):
        assert name not in reg


def test_an_init_method_must_be_a_function():
    with pytest.raises(UserError, match="not callable"):
        plugins.register_init("XpNotAFunction")(3.5)
    # the registry itself refuses it too, whoever calls it
    with pytest.raises(UserError, match=r"lacks the method\(s\) __call__"):
        init_registry.add("XpNotAFunction", 3.5)
    assert "XpNotAFunction" not in init_registry


@pytest.mark.parametrize("call,base", [("register_layer", Layer), ("register_alg", Worker),
                                       ("register_updater", Updater), ("register_lr", LRGen)])
def test_a_name_registered_twice_is_refused(call, base):
    name = f"XpTwice_{call}"
    body = {"compute_feature": lambda s, f, l: None, "compute_gradient": lambda s, f, l: None,
            "train_one_batch": lambda s, st, n: None, "test_one_batch": lambda s, st, p, n: None,
            "rule": lambda s, w, g, lr, h: None, "get": lambda s, step: 0.1}
    first = type("First", (base,), body)
    second = type("Second", (base,), body)
    register = getattr(plugins, call)
    register(name)(first)
    register(name)(first)  # the same class again (a module imported twice) is fine
    with pytest.raises(UserError) as e:
        register(name)(second)
    assert f"{name!r} is already registered to First" in str(e.value)
    assert "cannot register Second" in str(e.value)


def test_register_needs_a_name():
    with pytest.raises(UserError, match=r"write @register_layer\(\"MyName\"\)"):
        @plugins.register_layer  # forgot the name: must not silently replace the class
        class Oops(Layer):
            pass
    with pytest.raises(UserError, match=r"register\(\) takes the names"):
        layer_registry.register(Layer)
    with pytest.raises(UserError, match="non-empty name"):
        plugins.register_alg("")


def test_direct_registry_calls_check_the_same():
    # layer_registry.register is the same call as plugins.register_layer
    with pytest.raises(UserError, match=r"lacks the method\(s\) compute_gradient"):
        layer_registry.register("XpDirect")(layer_without_gradient())
    with pytest.raises(UserError, match=r"lacks the method\(s\) rule"):
        updater_registry.register("XpDirectUpd")(updater_without_rule())


def test_stub_detection():
    def bare(self):
        raise NotImplementedError

    def with_message(self):
        """Doc."""
        raise NotImplementedError(f"{type(self).__name__} has no gradient")

    def real(self):
        return 1

    assert is_stub(bare) and is_stub(with_message) and not is_stub(real)
    assert is_stub(Layer.compute_gradient) and not is_stub(Layer.setup)

    class Base:
        def run(self):
            return 1

        def hook(self):
            raise NotImplementedError

    class Child(Base):
        pass

    class Deliberate(Base):
        def hook(self):
            raise NotImplementedError  # written here: taken as meant

    assert missing_methods(Child, ("run",)) == ["hook"]
    assert missing_methods(Deliberate, ("run",)) == []
    # a registry with no required methods checks nothing (e.g. launchers)
    assert missing_methods(Child) == []
    reg = Registry("thing")
    reg.add("child", Child)
    assert reg.get("child") is Child


# ------------------------------------------------------- the user-updater example --
def singa(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "singa_cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def example_copy(tmp_path: Path, steps: int | None = None, extra: str = "") -> Path:
    """The example's conf and lion.py in a directory outside the package, with its data."""
    shutil.copy(EXAMPLE / "job.conf", tmp_path / "job.conf")
    shutil.copy(EXAMPLE / "lion.py", tmp_path / "lion.py")
    r = subprocess.run([sys.executable, str(EXAMPLE / "data.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    conf = tmp_path / "job.conf"
    text = conf.read_text()
    if steps is not None:
        text = re.sub(r"^train_steps: \d+", f"train_steps: {steps}", text, flags=re.M)
    conf.write_text(text.replace("train_one_batch {", extra + "train_one_batch {"))
    return conf


def test_the_example_needs_its_module(tmp_path):
    example_copy(tmp_path)
    r = singa("validate", "job.conf", cwd=tmp_path)
    assert r.returncode == 2
    assert "updater { user_type: 'Lion' }: no updater is registered" in r.stderr
    r = singa("validate", "job.conf", "--module", "lion.py", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Lion" in r.stdout


def test_the_user_updater_trains_a_two_process_job(tmp_path):
    example_copy(tmp_path)
    r = singa("submit", "job.conf", "--module", "lion.py", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    acc = {int(s): float(a) for s, a in
           re.findall(r"Test @ step (\d+)  Loss = [\d.]+, accuracy = ([\d.]+)", r.stdout)}
    print("user-updater example, test accuracy by step:", acc)
    assert sorted(acc) == [0, 200, 400, 600]
    assert acc[0] < 0.5 and acc[600] > 0.9
    from runtime.jobs import jobdb

    job = jobdb.JobDB().jobs()[-1]
    assert job.state == jobdb.SUCCEEDED and job.nprocs == 2
    assert job.options["modules"] == ["lion.py"]


def lion_steps(ws: Path) -> tuple[dict, dict]:
    from runtime import checkpoint

    return (checkpoint.load([str(ws / "checkpoint" / "step0-worker0")]),
            checkpoint.load([str(ws / "checkpoint" / "step1-worker0")]))


def test_the_servers_apply_lion(tmp_path):
    """Lion's signature: in its first step every weight moves by exactly lr
    (sign of the gradient), which no built-in updater does."""
    conf = example_copy(tmp_path, steps=1, extra="checkpoint_freq: 1\n")
    r = singa("submit", "job.conf", "--module", "lion.py", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    before, after = lion_steps(tmp_path / "workspace")
    for name in ("w1", "w2", "w3"):
        step = np.abs(after[name][1] - before[name][1])
        moved = step[step > 0]
        assert moved.size > 0.9 * step.size
        np.testing.assert_allclose(moved, 0.003, rtol=1e-3)
    assert conf.exists()


# ----------------------------------------------------------------- across hosts --
from tests.cluster.conftest import ssh_cluster  # noqa: E402,F401 - the fixture, for this module


def test_the_user_updater_runs_across_hosts(ssh_cluster, tmp_path):
    example_copy(tmp_path, steps=200)
    (tmp_path / "lion.py").rename(tmp_path / "mylion.py")  # a name no host knows
    r = singa("submit", "job.conf", "--module", "mylion.py", "-H", str(ssh_cluster.hostfile(1)),
              "--ssh-config", str(ssh_cluster.ssh_config), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Test @ step 200  Loss = " in r.stdout
    from runtime.jobs import jobdb

    job = jobdb.JobDB().job(int(re.search(r"Submitted job (\d+)", r.stderr).group(1)))
    assert job.state == jobdb.SUCCEEDED
    assert sorted(set(job.hosts)) == sorted(ssh_cluster.addresses)


# ------------------------------------------------------------------ the guide --
def test_the_guide_quotes_tested_files():
    """Every block of docs/programming-guide.md marked `<!-- from: PATH -->`
    is a verbatim part of that file (which the tests run)."""
    guide = (ROOT / "docs" / "programming-guide.md").read_text()
    quoted = re.findall(r"<!-- from: (\S+) -->\n```[a-z]*\n(.*?)```", guide, flags=re.S)
    assert len(quoted) >= 8
    for path, block in quoted:
        text = (ROOT / path).read_text()
        assert block in text, f"the guide's copy of {path} differs from it:\n{block}"
