"""Field-path overrides of a job.conf (runtime.config.override) on the real
MNIST confs: --set parsing, apply by type and selector, every error kind with
its suggestion, check, grid/sample/label, render, and load_job's overrides."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from conf import job_pb2
from runtime.config import load_job, load_text, parse_text
from runtime.config.override import (
    Setting,
    apply,
    check,
    grid,
    label,
    parse_set,
    render,
    sample,
)
from runtime.errors import ConfigError, UserError

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT / "examples/mnist/job.conf"
CONV = ROOT / "examples/mnist/conv.conf"


def job(conf: Path = MNIST) -> job_pb2.JobProto:
    return parse_text(conf.read_text(), str(conf))[0]


def layer(j: job_pb2.JobProto, name: str, nth: int = 0):
    return [l for l in j.neuralnet.layer if l.name == name][nth]


def error(j: job_pb2.JobProto, path: str, value: str) -> str:
    """apply's UserError message; the job must be left unchanged."""
    before = j.SerializeToString()
    with pytest.raises(UserError) as e:
        apply(j, path, value)
    assert j.SerializeToString() == before, "a failed apply changed the job"
    return str(e.value)


@pytest.fixture
def mnist_data():
    """The data files load_job looks for, linked from the main checkout when
    the worktree has none (they are git-ignored)."""
    for name in ("train_data.bin", "test_data.bin"):
        dst = MNIST.parent / name
        src = Path("/work/main/examples/mnist") / name
        if not dst.exists():
            if not src.exists():
                pytest.skip(f"no {name} (run `singa data fetch`)")
            if dst.is_symlink():
                dst.unlink()
            os.symlink(src, dst)


# ------------------------------------------------------------------ --set ---
def test_parse_set_splits_values_and_strips_spaces():
    s = parse_set(" updater.learning_rate.base_lr = 0.1, 0.01 ,0.001", "--set #1")
    assert s == Setting("updater.learning_rate.base_lr", ("0.1", "0.01", "0.001"), "--set #1")
    assert parse_set("neuralnet.layer[fc1].innerproduct_conf.num_output=256", "--set #2").values \
        == ("256",)


@pytest.mark.parametrize("spec, expected", [
    ("x", "--set #2 'x': expected PATH=VALUE[,VALUE...], e.g. updater.learning_rate.base_lr="),
    ("train_steps=", "--set #2 'train_steps=': expected PATH=VALUE[,VALUE...]"),
    ("=1,2", "--set #2 '=1,2': expected PATH=VALUE[,VALUE...]"),
    ("train_steps=1,,2", "empty value (value 2 of 3)"),
    ("train_steps=1, 2,1", "value(s) given twice: 1"),
    ("updater..type=kSGD", "--set #2: updater..type: expected a field name at '.type'"),
    ("neuralnet.layer[].name=x", "empty selector after 'layer'"),
    ("neuralnet.layer[fc1].[my.ext].x=1", "extension fields ([ext] blocks) cannot be set"),
])
def test_parse_set_errors_say_what_was_given_and_what_is_expected(spec, expected):
    with pytest.raises(UserError) as e:
        parse_set(spec, "--set #2")
    assert expected in str(e.value)


# ------------------------------------------------------------------ apply ---
def test_scalars_of_every_type():
    j = job()
    apply(j, "updater.learning_rate.base_lr", "0.1")                 # float
    apply(j, "train_steps", "300")                                   # int32
    apply(j, "updater.type", "kAdaGrad")                             # enum by name
    apply(j, "train_one_batch.alg", str(job_pb2.kCD))                # enum by number
    apply(j, "cluster.server_worker_separate", "true")               # bool
    apply(j, "cluster.workspace", "ws/lr-0.1")                       # string
    assert j.updater.learning_rate.base_lr == pytest.approx(0.1)
    assert j.train_steps == 300
    assert j.updater.type == job_pb2.kAdaGrad
    assert j.train_one_batch.alg == job_pb2.kCD
    assert j.cluster.server_worker_separate is True
    apply(j, "cluster.server_worker_separate", "0")
    assert j.cluster.server_worker_separate is False
    assert j.cluster.workspace == "ws/lr-0.1"
    # the rest of the job is as written
    assert j.updater.momentum == pytest.approx(0.9) and j.test_steps == 100


def test_layer_and_param_by_name():
    j = job()
    apply(j, "neuralnet.layer[fc1].innerproduct_conf.num_output", "256")
    apply(j, "neuralnet.layer[fc2].param[b2].init.high", "0.5")
    assert layer(j, "fc1").innerproduct_conf.num_output == 256
    assert layer(j, "fc2").innerproduct_conf.num_output == 2000
    assert layer(j, "fc2").param[1].init.high == pytest.approx(0.5)
    assert layer(j, "fc2").param[0].init.high == pytest.approx(0.05)

    c = job(CONV)
    apply(c, "neuralnet.layer[ip1].param[b3].lr_scale", "4")
    apply(c, "neuralnet.layer[pool1].pooling_conf.pool", "AVG")
    assert layer(c, "ip1").param[1].lr_scale == 4
    assert layer(c, "pool1").pooling_conf.pool == job_pb2.PoolingProto.AVG
    assert layer(c, "pool2").pooling_conf.pool == job_pb2.PoolingProto.MAX


def test_a_name_selects_every_layer_of_that_name_an_index_one():
    j = job()
    apply(j, "neuralnet.layer[data].store_conf.std_value", "255")
    assert [layer(j, "data", k).store_conf.std_value for k in (0, 1)] == [255, 255]
    apply(j, "neuralnet.layer[0].store_conf.batchsize[0]", "32")    # the train data layer
    assert list(layer(j, "data", 0).store_conf.batchsize) == [32]
    assert list(layer(j, "data", 1).store_conf.batchsize) == [100]


def test_index_selects_a_repeated_scalar_element():
    c = job(CONV)
    apply(c, "neuralnet.layer[1].store_conf.shape[2]", "32")
    assert list(c.neuralnet.layer[1].store_conf.shape) == [1, 28, 32]
    assert list(c.neuralnet.layer[0].store_conf.shape) == [1, 28, 28]
    apply(c, "neuralnet.layer[conv1].srclayers[0]", "pool2")
    assert list(layer(c, "conv1").srclayers) == ["pool2"]


def test_unset_sub_messages_are_created():
    j = job()
    assert not j.updater.learning_rate.HasField("inverse_conf")
    apply(j, "updater.learning_rate.inverse_conf.gamma", "0.5")
    assert j.updater.learning_rate.HasField("inverse_conf")
    assert j.updater.learning_rate.inverse_conf.gamma == pytest.approx(0.5)
    apply(j, "neuralnet.layer[fc1].param[w1].init.std", "0.02")
    assert layer(j, "fc1").param[0].init.std == pytest.approx(0.02)
    assert layer(j, "fc1").param[0].init.low == pytest.approx(-0.05)


@pytest.mark.parametrize("path, value, expected", [
    # unknown field, with the nearest names
    ("updater.learning_rate.base_rl", "1",
     "updater.learning_rate.base_rl: updater.learning_rate has no field 'base_rl'; "
     "did you mean 'base_lr'?"),
    ("trian_steps", "1", "trian_steps: the job has no field 'trian_steps'; did you mean 'train_steps'"),
    ("updater.learning_rate.step_conf.freq", "3",
     "did you mean 'change_freq'? ('freq' is a name from SINGA's docs)"),
    ("updater.learning_rate.zzz", "3",
     "fields of LRGenProto: type, user_type, base_lr, fixedstep_conf, step_conf, linear_conf, "
     "exponential_conf, inverse_conf, inverset_conf; extension fields ([ext] blocks) cannot be set"),
    # unknown element names
    ("neuralnet.layer[fc9].innerproduct_conf.num_output", "3",
     "neuralnet.layer[fc9].innerproduct_conf.num_output: neuralnet has no layer named 'fc9'; "
     "did you mean 'fc6' or 'fc5' or 'fc4'?"),
    ("neuralnet.layer[fc1].param[w9].init.std", "1",
     "neuralnet.layer[fc1] has no param named 'w9'; param names: w1, b1"),
    ("neuralnet.layer[-1].name", "x", "an index counts from 0 ([0]..[13])"),
    # index out of range
    ("neuralnet.layer[14].name", "x",
     "neuralnet.layer[14].name: index [14] is out of range; neuralnet has 14 layer elements ([0]..[13])"),
    ("neuralnet.layer[data].store_conf.batchsize[1]", "8",
     "index [1] is out of range; neuralnet.layer[data].store_conf.batchsize has 1 value(s) ([0]..[0])"),
    ("neuralnet.layer[data].store_conf.batchsize[x]", "8", "selected by index (0-based)"),
    # a selector missing or where none belongs
    ("neuralnet.layer.name", "x", "neuralnet.layer is repeated; add [name] or [index]"),
    ("neuralnet.layer[data].store_conf.shape", "8",
     "neuralnet.layer[data].store_conf.shape is repeated; add [index]"),
    ("updater[0].type", "kSGD", "updater is not repeated; remove [0]"),
    # a message given a value, a scalar given fields
    ("updater.learning_rate", "3",
     "updater.learning_rate: updater.learning_rate is a message (LRGenProto); give one of its "
     "fields: type, user_type, base_lr,"),
    ("updater.momentum.x", "1", "updater.momentum is a float, not a message; it has no field 'x'"),
    # values
    ("updater.learning_rate.base_lr", "abc", "updater.learning_rate.base_lr: expected a number, got 'abc'"),
    ("updater.learning_rate.base_lr", "nan", "expected a finite number, got 'nan'"),
    ("updater.momentum", "1e39", "1e39 is out of range for a float"),
    ("train_steps", "1.5", "train_steps: expected an integer (int32), got '1.5'"),
    ("train_steps", "2147483648", "2147483648 is out of range for int32 ([-2147483648, 2147483647])"),
    ("cluster.share_memory", "yes", "expected true or false (or 1 or 0), got 'yes'"),
    ("updater.type", "kSDG", "updater.type: expected a value of UpdaterType, got 'kSDG'; did you mean kSGD?"),
    ("updater.type", "99", "values: kSGD, kAdaGrad, kRMSProp, kNesterov, kAdaDelta, kAdam, kAdamMax"),
    ("train_one_batch.alg", "kBackPropagation", "did you mean kBP? (kBackPropagation is a name from"),
])
def test_every_bad_path_or_value_says_where_and_what_is_expected(path, value, expected):
    assert expected in error(job(), path, value)


def test_few_layer_names_are_listed_in_full():
    msg = error(job(CONV), "neuralnet.layer[zzz].name", "x")
    assert msg.endswith("neuralnet has no layer named 'zzz'; "
                        "layer names: data, conv1, pool1, conv2, pool2, ip1, relu1, ip2, loss")
    # 13 names in the MLP: the first ten, and how many there are
    assert "layer names: data, fc1, tanh1, fc2, tanh2, fc3, tanh3, fc4, tanh4, fc5, ... (13 in all)" \
        in error(job(), "neuralnet.layer[zzz].name", "x")


# ------------------------------------------------------------------ check ---
def test_check_reports_every_problem_at_once_and_leaves_the_job():
    j = job()
    before = j.SerializeToString()
    settings = [
        parse_set("updater.learning_rate.base_lr=0.1,abc,0.01,nan", "--set #1"),
        parse_set("updater.learning_rate.base_rl=0.1,0.2", "--set #2"),
        parse_set("neuralnet.layer[fc9].innerproduct_conf.num_output=1,2", "--set #3"),
        parse_set("neuralnet.layer[fc1].innerproduct_conf.num_output=256,512", "--set #4"),
        parse_set("train_steps=100,1e2,0100", "--set #5"),
        parse_set("updater.learning_rate.base_lr=1", "--set #6"),
    ]
    with pytest.raises(UserError) as e:
        check(j, settings)
    lines = str(e.value).splitlines()
    assert lines == [
        "--set #6: updater.learning_rate.base_lr: set again (first by --set #1); give all its "
        "values in one --set",
        "--set #1: updater.learning_rate.base_lr: expected a number, got 'abc'",
        "--set #1: updater.learning_rate.base_lr: expected a finite number, got 'nan'",
        "--set #2: updater.learning_rate.base_rl: updater.learning_rate has no field 'base_rl'; "
        "did you mean 'base_lr'?",
        "--set #3: neuralnet.layer[fc9].innerproduct_conf.num_output: neuralnet has no layer named "
        "'fc9'; did you mean 'fc6' or 'fc5' or 'fc4'?",
        "--set #5: train_steps: expected an integer (int32), got '1e2'",
        "--set #5: train_steps: 100 and 0100 are the same value",
    ]
    assert j.SerializeToString() == before


def test_check_passes_good_settings_without_changing_the_job():
    j = job()
    check(j, [parse_set("updater.learning_rate.base_lr=0.1,0.01", "--set #1"),
              parse_set("updater.learning_rate.inverse_conf.pow=0.5,0.75", "--set #2")])
    assert j.updater.learning_rate.base_lr == pytest.approx(0.01)
    assert not j.updater.learning_rate.HasField("inverse_conf")


# ----------------------------------------------------------------- points ---
LR = Setting("updater.learning_rate.base_lr", ("0.1", "0.01", "0.001"), "--set #1")
FC1 = Setting("neuralnet.layer[fc1].innerproduct_conf.num_output", ("256", "512"), "--set #2")


def test_grid_is_the_product_with_the_last_setting_fastest():
    points = grid([LR, FC1])
    assert len(points) == 6
    assert [(p[LR.path], p[FC1.path]) for p in points] == [
        ("0.1", "256"), ("0.1", "512"), ("0.01", "256"), ("0.01", "512"),
        ("0.001", "256"), ("0.001", "512")]
    assert list(points[0]) == [LR.path, FC1.path]
    assert grid([]) == [{}]
    with pytest.raises(UserError, match="set again"):
        grid([LR, Setting(LR.path, ("1",), "--set #3")])


def test_sample_is_distinct_deterministic_and_in_grid_order():
    full = grid([LR, FC1])
    a = sample([LR, FC1], 4, seed=7)
    assert a == sample([LR, FC1], 4, seed=7)
    assert len(a) == 4 and len({tuple(p.items()) for p in a}) == 4
    assert all(p in full for p in a)
    assert sorted(a, key=full.index) == a
    assert any(sample([LR, FC1], 3, seed=s) != sample([LR, FC1], 3, seed=0) for s in range(1, 20))
    assert sample([LR, FC1], 6, seed=1) == full
    assert sample([LR, FC1], 100, seed=None) == full
    with pytest.raises(UserError, match="at least 1, got 0"):
        sample([LR, FC1], 0, seed=1)


def test_sample_of_a_huge_grid_does_not_build_it():
    values = tuple(str(k) for k in range(1, 1001))
    settings = [Setting(p, values, f"--set #{k}") for k, p in
                enumerate(["train_steps", "test_steps", "disp_freq", "test_freq"])]   # 10^12 points
    t = time.monotonic()
    points = sample(settings, 5, seed=3)
    assert time.monotonic() - t < 1.0
    assert len({tuple(p.values()) for p in points}) == 5
    assert all(list(p) == ["train_steps", "test_steps", "disp_freq", "test_freq"] for p in points)


def test_label_is_short_and_keeps_layer_and_param_names():
    assert label({LR.path: "0.01", FC1.path: "256"}) == "base_lr=0.01 fc1.num_output=256"
    assert label({"neuralnet.layer[fc1].param[w1].init.std": "0.1",
                  "neuralnet.layer[0].store_conf.batchsize[0]": "32",
                  "cluster.nworker_groups": "2"}) \
        == "w1.std=0.1 layer[0].batchsize[0]=32 nworker_groups=2"
    # two paths that end alike keep one more part
    assert label({"updater.learning_rate.step_conf.gamma": "0.9",
                  "updater.learning_rate.inverse_conf.gamma": "0.1"}) \
        == "step_conf.gamma=0.9 inverse_conf.gamma=0.1"
    assert label({}) == ""


# ----------------------------------------------------------------- render ---
def test_render_round_trips_to_the_overridden_job():
    text = CONV.read_text()
    overrides = [("updater.learning_rate.base_lr", "0.001"),
                 ("neuralnet.layer[ip1].innerproduct_conf.num_output", "128"),
                 ("updater.learning_rate.inverse_conf.pow", "0.5")]
    out = render(text, str(CONV), overrides)
    expected = job(CONV)
    for p, v in overrides:
        apply(expected, p, v)
    back, _ = parse_text(out, "rendered.conf")
    assert back == expected
    assert back != job(CONV)
    assert "base_lr: 0.001" in out and "num_output: 128" in out and "pow: 0.5" in out
    assert 'path: "train_data.bin"' in out          # relative paths stay relative
    assert "#" not in out                           # protobuf's text format: no comments
    # and without overrides, the same job as the file
    assert parse_text(render(text, str(CONV), []), "x")[0] == job(CONV)


def test_render_refuses_bad_overrides_and_unknown_extension_blocks():
    with pytest.raises(UserError, match="has no field 'base_rl'"):
        render(MNIST.read_text(), str(MNIST), [("updater.learning_rate.base_rl", "1")])
    rnnlm = ROOT / "examples/rnnlm/job.conf"
    if "[rnnlm." in rnnlm.read_text():
        with pytest.raises(ConfigError, match=r"extension \[rnnlm\.\w+\] is not defined"):
            render(rnnlm.read_text(), str(rnnlm), [])


# --------------------------------------------------------------- load_job ---
def test_load_job_applies_overrides_before_paths_and_validation(mnist_data):
    conf = load_job(str(MNIST), overrides=[
        ("updater.learning_rate.base_lr", "0.05"),
        ("neuralnet.layer[0].store_conf.path", "test_data.bin")])
    assert conf.proto.updater.learning_rate.base_lr == pytest.approx(0.05)
    # resolved as the file's own paths are, against the job.conf's directory
    assert conf.proto.neuralnet.layer[0].store_conf.path == str(MNIST.parent / "test_data.bin")
    assert not conf.warnings
    # the built net sees the override
    plain = load_job(str(MNIST))
    assert plain.proto.updater.learning_rate.base_lr == pytest.approx(0.01)


def test_an_override_that_breaks_a_rule_is_a_config_error_at_the_field(mnist_data):
    with pytest.raises(ConfigError) as e:
        load_job(str(MNIST), overrides=[("cluster.nworker_groups", "0"),
                                        ("neuralnet.layer[fc1].innerproduct_conf.num_output", "0")])
    msgs = [str(p) for p in e.value.problems]
    assert any("nworker_groups must be >= 1, got 0 (value set by the override "
               "cluster.nworker_groups=0)" in m for m in msgs), msgs
    assert any("layer 'fc1': innerproduct_conf.num_output must be > 0, got 0" in m
               and m.startswith(f"{MNIST}:66:") for m in msgs), msgs


def test_a_bad_override_is_a_user_error_listing_all_of_them(mnist_data):
    with pytest.raises(UserError) as e:
        load_job(str(MNIST), overrides=[("updater.learning_rate.base_rl", "1"),
                                        ("train_steps", "many")])
    assert not isinstance(e.value, ConfigError)
    assert str(e.value).splitlines() == [
        f"{MNIST}: bad override(s):",
        "updater.learning_rate.base_rl: updater.learning_rate has no field 'base_rl'; "
        "did you mean 'base_lr'?",
        "train_steps: expected an integer (int32), got 'many'",
    ]


def test_load_text_takes_overrides_too(mnist_data):
    conf = load_text(MNIST.read_text(), str(MNIST), overrides=[("train_steps", "7")])
    assert conf.proto.train_steps == 7
    with pytest.raises(ConfigError, match="train_steps must be > 0"):
        load_text(MNIST.read_text(), str(MNIST), overrides=[("train_steps", "0")])
