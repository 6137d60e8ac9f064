"""Jobs built in code (runtime.builder): builder -> text -> parse gives the
same JobProto; the graph helpers; errors that name the field; validate and
submit through the Driver."""
from __future__ import annotations

import glob
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conf import job_pb2
from runtime.builder import Job, Layer, Net, fill, to_text
from runtime.config import parse_text
from runtime.errors import ConfigError, UserError

ROOT = Path(__file__).resolve().parents[1]


def round_trip(job: Job) -> job_pb2.JobProto:
    proto = job.proto()
    parsed, _ = parse_text(str(job), "built.conf")
    assert parsed == proto, "\n" + str(job)
    return parsed


def mlp() -> Job:
    data = Layer("data", type="kRecordInput", include="kTrain",
                 store_conf={"backend": "kvfile", "path": "train.bin", "batchsize": 64,
                             "shape": [784], "std_value": 255.0, "random_skip": 5000})
    tdata = Layer("data", type="kRecordInput", include=["kTest"],
                  store_conf={"backend": "kvfile", "path": "test.bin", "batchsize": 100,
                              "shape": 784, "std_value": 255.0})
    ip1 = Layer("ip1", type="kInnerProduct", innerproduct_conf={"num_output": 30},
                param=[{"name": "w1", "init": {"type": "kUniform", "low": -0.05, "high": 0.05}},
                       {"name": "b1", "lr_scale": 2, "wd_scale": 0,
                        "init": {"type": "kConstant", "value": 0}}])(data)
    act = Layer("tanh1", type="kSTanh")(ip1)
    ip2 = Layer("ip2", type=job_pb2.kInnerProduct, srclayers=act,
                innerproduct_conf={"num_output": 10},
                param=[{"name": "w2", "init": {"type": "kGaussian", "std": 1e-3}}])
    loss = Layer("loss", type="kSoftmaxLoss", srclayers=[ip2, "data"],
                 softmaxloss_conf={"topk": 1})
    return Job("mlp", net=Net(tdata, loss), train_steps=1000, test_steps=10, test_freq=60,
               disp_freq=10, checkpoint_path=['a "quoted" path', "ünïcode/ckpt"],
               train_one_batch={"alg": "kBP"},
               updater={"type": "kSGD", "momentum": 0.9, "weight_decay": 5e-4,
                        "learning_rate": {"type": "kStep", "base_lr": 0.001,
                                          "step_conf": {"gamma": 0.997, "change_freq": 60}}},
               cluster={"nworkers_per_group": 2, "workspace": "ws"})


def test_builder_text_parse_is_the_same_job():
    job = round_trip(mlp())
    names = [l.name for l in job.neuralnet.layer]
    # Net(tdata, loss) brings in what loss reads, sources before readers
    assert names == ["data", "data", "ip1", "tanh1", "ip2", "loss"]
    assert list(job.neuralnet.layer[1].include) == [job_pb2.kTrain]
    assert job.neuralnet.layer[3].srclayers == ["ip1"]
    assert job.neuralnet.layer[5].srclayers == ["ip2", "data"]
    assert job.updater.learning_rate.step_conf.gamma == pytest.approx(0.997)
    assert job.checkpoint_path[1] == "ünïcode/ckpt"


def test_the_text_reads_like_a_job_conf():
    text = str(mlp())
    assert text.startswith('name: "mlp"\ntrain_steps: 1000\n')
    # blocks after plain fields, the net after the algorithm and updater
    assert text.index("train_one_batch {") < text.index("updater {") < \
        text.index("neuralnet {") < text.index("cluster {")
    layer = text[text.index('name: "ip1"'):]
    layer = layer[:layer.index("  layer {")]
    assert re.match(r'name: "ip1"\n\s+type: kInnerProduct\n\s+srclayers: "data"\n'
                    r'\s+innerproduct_conf \{\n\s+num_output: 30\n\s+\}\n\s+param \{', layer)


def test_floats_survive_the_text():
    import numpy as np

    values = np.random.default_rng(3).standard_normal(300).astype(np.float32)
    for v in values:
        for scale in (1.0, 1e-7, 1e6):
            round_trip(Job(updater={"momentum": float(v) * scale,
                                    "learning_rate": {"base_lr": float(v) * scale}}))


@pytest.mark.parametrize("conf", sorted(glob.glob(str(ROOT / "tests/config/valid/*.conf")))
                         + sorted(glob.glob(str(ROOT / "examples/*/*.conf"))))
def test_every_shipped_conf_prints_back_to_itself(conf):
    proto, _ = parse_text(Path(conf).read_text(), conf)
    again, _ = parse_text(to_text(proto), conf)
    assert again == proto


def test_the_user_updater_example_built_in_code_is_its_job_conf():
    sys.path.insert(0, str(ROOT / "examples/user-updater"))
    try:
        import build
    finally:
        sys.path.pop(0)
    conf, _ = parse_text((ROOT / "examples/user-updater/job.conf").read_text())
    assert round_trip(build.build()) == conf


def test_sequential_and_graph_forms():
    a = Layer("a", type="kDummy", dummy_conf={"input": True, "shape": [2, 3]})
    seq = Net.sequential(a, Layer("b", type="kReLU"), Layer("c", type="kSTanh"),
                         Layer("d", type="kDummy", srclayers=["a", "c"]))
    assert [(l.name, list(l.srclayers)) for l in seq.to_proto().layer] == \
        [("a", []), ("b", ["a"]), ("c", ["b"]), ("d", ["a", "c"])]
    # a graph given by its last layer: every source is brought in once
    x = Layer("x", type="kDummy", dummy_conf={"input": True, "shape": [2, 3]})
    l1, r1 = Layer("l", type="kReLU")(x), Layer("r", type="kSTanh")(x)
    top = Layer("top", type="kConcate", concate_conf={"concate_dim": 1})(l1, r1)
    assert [l.name for l in Net(top).layers] == ["x", "l", "r", "top"]
    net = Net(top, unroll_len=1, partition_dim=0).to_proto()
    assert net.partition_dim == 0 and net.HasField("unroll_len")


def test_a_job_takes_a_list_of_layers():
    a = Layer("a", type="kDummy", dummy_conf={"input": True, "shape": [2, 3]})
    job = Job("j", net=[a, Layer("b", type="kReLU", srclayers="a")])
    assert [l.name for l in round_trip(job).neuralnet.layer] == ["a", "b"]


@pytest.mark.parametrize("make,message", [
    (lambda: Layer("x", type="kInnerProdct"),
     "layer 'x': type 'kInnerProdct' is not a built-in layer type; did you mean kInnerProduct? "
     "(a user's layer is user_type='kInnerProdct')"),
    (lambda: Layer("x", innerproduct_conf={"num_ouput": 3}),
     "layer 'x': innerproduct_conf: InnerProductProto has no field 'num_ouput'; "
     "did you mean 'num_output'?"),
    (lambda: Layer("x", innerproduct_conf={"num_output": "3"}),
     "layer 'x': innerproduct_conf.num_output: expected an integer, got str '3'"),
    (lambda: Layer("x", innerproduct_conf={"num_output": 2 ** 40}),
     "layer 'x': innerproduct_conf.num_output: 1099511627776 does not fit"),
    (lambda: Layer("x", include="kTrian"), "layer 'x': include[0]: 'kTrian' is not a Phase; "
     "did you mean kTrain?"),
    (lambda: Layer("x", param=[{"name": "w", "init": {"std": "a"}}]),
     "layer 'x': param[0].init.std: expected a number, got str 'a'"),
    (lambda: Layer("x", innerproduct_conf=5),
     "layer 'x': innerproduct_conf: expected a dict of InnerProductProto fields, got int 5"),
    (lambda: Layer("x", srclayers=[3]),  # type: ignore[list-item]  # the wrong type is the test
     "layer 'x': srclayers takes Layers or layer names"),
    (lambda: Layer("", type="kReLU"), "Layer needs a name string"),
    (lambda: Job(nosuch=1), "job: JobProto has no field 'nosuch'; fields of JobProto: "),
    (lambda: Job(updater={"learning_rate": {"type": "kFixd"}}),
     "job: updater.learning_rate.type: 'kFixd' is not a ChangeMethod; did you mean kFixed"),
    (lambda: Layer("x", **{"[nope.data_conf]": {}}),  # type: ignore[arg-type]  # an extension field
     "no loaded .proto extends singa.LayerProto with nope.data_conf"),
    (lambda: Net(Layer("a", type="kReLU"), "b"),  # type: ignore[arg-type]  # the wrong type is the test
     "Net takes Layers, got str 'b'"),
])
def test_mistakes_name_the_field(make, message):
    with pytest.raises(UserError) as e:
        make()
    assert message in str(e.value)


def test_messages_can_be_given_as_protos():
    upd = job_pb2.UpdaterProto(type=job_pb2.kAdam, adam_conf=job_pb2.AdamProto(beta1=0.8))
    job = round_trip(Job(updater=upd))
    assert job.updater.adam_conf.beta1 == pytest.approx(0.8)
    with pytest.raises(UserError, match="updater: expected a UpdaterProto"):
        Job(updater=job_pb2.LRGenProto())
    # fill() is the same machinery, for any message
    p = fill(job_pb2.ParamProto(), {"name": "w", "shape": [2, 3]})
    assert list(p.shape) == [2, 3]


def test_extensions_by_full_or_bare_name(tmp_path):
    from runtime.config.extensions import load_proto

    (tmp_path / "bxp.proto").write_text(
        'syntax = "proto2";\npackage bxp;\nimport "job.proto";\n'
        "message WinProto { optional int32 window = 1; }\n"
        "extend singa.LayerProto { optional WinProto win_conf = 1050; }\n")
    mod = load_proto(tmp_path / "bxp.proto")
    a = Layer("a", type="kDummy", win_conf={"window": 5})
    b = Layer("b", type="kDummy", **{"[bxp.win_conf]": {"window": 6}})
    job = round_trip(Job(net=[a, b]))
    assert [l.Extensions[mod.win_conf].window for l in job.neuralnet.layer] == [5, 6]
    assert "[bxp.win_conf] {" in str(Job(net=[a]))


# ------------------------------------------------------------ validate ---
def test_validate_returns_the_checked_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = Layer("a", type="kDummy", dummy_conf={"input": True, "shape": [4, 3]})
    ip = Layer("ip", type="kInnerProduct", innerproduct_conf={"num_output": 3},
               param=[{"name": "w", "init": {"type": "kGaussian"}},
                      {"name": "b", "init": {"type": "kConstant"}}])(a)
    loss = Layer("loss", type="kEuclideanLoss")(ip, a)
    job = Job("v", net=Net(loss), train_steps=5, train_one_batch={"alg": "kBP"},
              updater={"type": "kSGD", "learning_rate": {"type": "kFixed", "base_lr": 0.1}},
              cluster={"workspace": "ws"})
    conf = job.validate()
    # relative paths resolve against the current directory, as for the Driver
    assert conf.proto.cluster.workspace == str(tmp_path / "ws")


def test_validate_locates_problems_in_the_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = Layer("a", type="kDummy", dummy_conf={"input": True, "shape": [4, 3]})
    ip = Layer("ip", type="kInnerProduct", innerproduct_conf={})(a)
    job = Job("bad", net=Net(ip), train_steps=5, train_one_batch={"alg": "kBP"},
              updater={"type": "kSGD", "learning_rate": {"type": "kFixed", "base_lr": 0.1}})
    with pytest.raises(ConfigError) as e:
        job.validate("bad.conf")
    text = str(job).split("\n")
    (p,) = [p for p in e.value.problems if "num_output" in p.message]
    line, col = map(int, p.where.split(":")[1:3])
    assert p.where.startswith("bad.conf:") and "innerproduct_conf" in text[line - 1]


# -------------------------------------------------------------- submit ---
MAIN = '''
"""A user's main file: a job built in code, with a user layer that reads its
own config block, submitted through the Driver (two processes)."""
import sys

from runtime import plugins
from runtime.builder import Job, Layer, Net


def build() -> Job:
    plugins.load(["xp.proto", "scale.py"])     # the block and the layer, for validation here
    data = Layer("data", type="kDummy", dummy_conf={"input": True, "shape": [8, 3]})
    ip = Layer("ip", type="kInnerProduct", innerproduct_conf={"num_output": 3},
               param=[{"name": "w", "init": {"type": "kGaussian", "std": 0.1}},
                      {"name": "b", "init": {"type": "kConstant"}}])(data)
    scale = Layer("scale", user_type="XpScale", scale_conf={"factor": 0.5})(ip)
    loss = Layer("loss", type="kEuclideanLoss")(scale, data)
    return Job("built", net=Net(loss), train_steps=8, disp_freq=4, seed=3,
               train_one_batch={"alg": "kBP"},
               updater={"type": "kSGD", "learning_rate": {"type": "kFixed", "base_lr": 0.05}},
               cluster={"nworkers_per_group": 2, "workspace": "ws"})


if __name__ == "__main__":
    sys.exit(build().submit(protos=["xp.proto"], modules=["scale.py"], name="from-builder"))
'''


def test_a_built_job_with_a_user_layer_and_block_is_submitted(tmp_path):
    from tests.config.test_extensions import SCALE_LAYER, XP_PROTO

    (tmp_path / "xp.proto").write_text(XP_PROTO)
    (tmp_path / "scale.py").write_text(SCALE_LAYER)
    (tmp_path / "main.py").write_text(MAIN)
    r = subprocess.run([sys.executable, "main.py"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=180, env=_env())
    assert r.returncode == 0, r.stderr
    assert "Train @ step 4  Loss = " in r.stdout and "SUCCEEDED" in r.stderr
    from runtime.jobs import jobdb

    job = [j for j in jobdb.JobDB().jobs() if j.name == "from-builder"][-1]
    assert job.nprocs == 2 and job.state == jobdb.SUCCEEDED
    # the compiled proto, the layer and main.py itself ship with the job
    assert job.options["modules"] == ["xp_pb2.py", "scale.py", "main.py"]


def _env() -> dict:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env
