"""load_job / validate: the rules, their locations and severities, path resolution.

The nets here use kDummy layers (and layer types with no implementation, which
only give warnings), so these tests do not depend on the neuron layers.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conf import job_pb2
from runtime.config import load_job, parse_text
from runtime.config.paths import resolve_input, resolve_output, resolve_paths
from runtime.config.validate import check, validate
from runtime.errors import ConfigError, UserError

HEAD = """name: "t"
train_steps: 10
train_one_batch { alg: kBP }
updater { type: kSGD learning_rate { type: kFixed base_lr: 0.1 } }
"""
DATA = 'layer { name: "data" type: kDummy dummy_conf { input: true shape: 4 shape: 3 } }\n'


def write(tmp_path: Path, body: str, name: str = "job.conf") -> str:
    p = tmp_path / name
    p.write_text(body)
    return str(p)


def at(body: str, needle: str, nth: int = 0) -> str:
    """':LINE:COL: ' of the nth occurrence of needle in body (both from 1)."""
    k = -1
    for _ in range(nth + 1):
        k = body.index(needle, k + 1)
    line = body.count("\n", 0, k) + 1
    col = k - (body.rfind("\n", 0, k) + 1) + 1
    return f":{line}:{col}: "


def errors_of(tmp_path, body: str, **kw) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_job(write(tmp_path, body), **kw)
    return [str(p) for p in e.value.problems]


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


def test_a_valid_job_loads_with_absolute_paths(tmp_path):
    (tmp_path / "data.bin").write_bytes(b"")
    path = write(tmp_path, HEAD + 'checkpoint_path: "data.bin"\nneuralnet {\n' + DATA + "}\n")
    job = load_job(path)
    assert job.path == path
    assert job.proto.checkpoint_path[0] == str(tmp_path / "data.bin")
    assert job.proto.cluster.workspace == str(tmp_path / "workspace")
    assert job.paths.workspace_defaulted
    assert job.nets[job_pb2.kTrain].layers[0].shape == (4, 3)


def test_all_problems_are_reported_at_once_sorted_by_line(tmp_path):
    body = ('name: "t"\ntrain_steps: 0\ntrain_one_batch { }\nupdater { }\nneuralnet {\n'
            + DATA + 'layer { name: "x" type: kDummy srclayers: "nope" }\n}\n'
            "cluster { nworker_groups: 0 }\n")
    errs = errors_of(tmp_path, body)
    lines = [int(e.split(":")[1]) for e in errs]
    assert lines == sorted(lines)
    text = "\n".join(errs)
    for want in ("2:1: train_steps must be > 0", "3:1: train_one_batch { alg } is not set",
                 "4:1: updater { type } is not set", "unknown srclayer 'nope'",
                 "9:11: cluster: nworker_groups must be >= 1, got 0"):
        assert want in text


def test_user_defaults_hint_the_builtin_choices(tmp_path):
    body = 'train_steps: 1\nupdater { learning_rate { base_lr: 0.1 } }\nneuralnet {\n' + DATA + "}\n"
    text = "\n".join(errors_of(tmp_path, body))
    assert "built-in choices: kBP, kCD, kBPTT" in text
    assert "built-in types: kSGD, kAdaGrad" in text
    assert "2:11: learning_rate { type } is not set" in text and "kFixed, kInverseT" in text


def test_same_layer_name_in_different_phases_is_legal(tmp_path):
    body = (HEAD + "test_steps: 2\ntest_freq: 5\nneuralnet {\n"
            + DATA.replace("} }", "} include: kTrain }")
            + DATA.replace("} }", "} include: kTest }").replace("shape: 4", "shape: 2")
            + 'layer { name: "out" type: kDummy srclayers: "data" }\n}\n')
    job = load_job(write(tmp_path, body))
    assert job.nets[job_pb2.kTest].layers[0].shape == (2, 3)
    assert job.nets[job_pb2.kTrain].layers[0].shape == (4, 3)


def test_duplicate_layer_name_within_a_phase(tmp_path):
    body = HEAD + "neuralnet {\n" + DATA + DATA + "}\n"
    (e,) = errors_of(tmp_path, body)
    assert at(body, "name", 2) + "layer 'data': duplicate layer name in the train net " \
        f"(first defined at {tmp_path / 'job.conf'}{at(body, 'name', 1)[:-2]})" in e


def test_exclude_style_duplicates_are_fine_when_the_phase_is_unused(tmp_path):
    # v0.1 style: both data layers are in the (unused) validation phase
    body = (HEAD + "test_steps: 1\nneuralnet {\n" + DATA.replace("} }", "} exclude: kTest }")
            + DATA.replace("} }", "} exclude: kTrain }") + "}\n")
    load_job(write(tmp_path, body))


def test_include_and_exclude_mixed(tmp_path):
    body = (HEAD + "neuralnet {\n" + DATA.replace("} }", "} include: kTrain }")
            + 'layer { name: "o" type: kDummy srclayers: "data" exclude: kTest }\n}\n')
    (e,) = errors_of(tmp_path, body)
    assert at(body, "exclude") + "layer 'o' uses exclude while layer 'data'" in e


def test_duplicate_and_unknown_share_from_param_names(tmp_path):
    body = (HEAD + "neuralnet {\n" + DATA
            + 'layer { name: "h" type: kInnerProduct srclayers: "data" innerproduct_conf { num_output: 2 }\n'
            '  param { name: "w" init { type: kGaussian } } param { name: "w" share_from: "ww" } }\n}\n')
    text = "\n".join(errors_of(tmp_path, body))
    assert at(body, 'name: "w"', 1) + "layer 'h': duplicate param name 'w'" in text
    assert at(body, "share_from") + "layer 'h': param 'w' shares from unknown param 'ww' in " \
        "the train net" in text


def test_rbm_pair_is_a_legal_cycle_and_unimplemented_types_warn(tmp_path):
    body = (HEAD.replace("kBP", "kCD") + "neuralnet {\n" + DATA
            + 'layer { name: "vis" type: kRBMVis srclayers: "data" srclayers: "hid" rbm_conf { hdim: 5 }\n'
            '  param { name: "w" init { type: kGaussian } } param { name: "bv" init { type: kConstant } } }\n'
            'layer { name: "hid" type: kRBMHid srclayers: "vis" rbm_conf { hdim: 5 }\n'
            '  param { name: "w_" share_from: "w" } param { name: "bh" init { type: kConstant } } }\n}\n')
    from runtime.neuralnet import layer_registry
    job = load_job(write(tmp_path, body))
    warned = "\n".join(str(w) for w in job.warnings)
    if job_pb2.kRBMVis not in layer_registry:
        assert "layer type kRBMVis is not implemented yet" in warned
        # submitting a job that cannot run is an error
        with pytest.raises(ConfigError, match="kRBMVis is not implemented yet"):
            load_job(write(tmp_path, body), submit=True)


def test_a_non_rbm_pair_feeding_each_other_is_a_cycle(tmp_path):
    body = (HEAD + "neuralnet {\n" + DATA
            + 'layer { name: "a" type: kDummy srclayers: "b" }\n'
            + 'layer { name: "b" type: kDummy srclayers: "a" }\n}\n')
    (e,) = errors_of(tmp_path, body)
    assert at(body, "srclayers", 1) + "layer 'b': layers 'a' and 'b' are each other's " \
        "srclayers" in e


def test_layer_fields_are_checked_without_layer_implementations(tmp_path):
    body = (HEAD + "neuralnet {\n" + DATA
            + 'layer { name: "ip" type: kInnerProduct srclayers: "data" }\n'
            + 'layer { name: "g" type: kGRU srclayers: "data" gru_conf { } }\n'
            + 'layer { name: "n" type: kLRN srclayers: "data" lrn_conf { local_size: 2 } }\n'
            + 'layer { name: "c" type: kConvolution srclayers: "data" convolution_conf { kernel: 3 } }\n'
            + "}\n")
    text = "\n".join(errors_of(tmp_path, body))
    assert at(body, "type: kInner") + "layer 'ip': a kInnerProduct layer needs " \
        "innerproduct_conf { num_output: N }" in text
    assert at(body, "gru_conf") + "layer 'g': gru_conf.dim_hidden is required" in text
    assert at(body, "local_size") + "layer 'n': lrn_conf.local_size must be a positive odd " \
        "number" in text
    assert at(body, "convolution_conf") + "layer 'c': convolution_conf.num_filters is " \
        "required" in text
    assert "a kGRU layer takes 6 or 9 param(s), got 0" in text


def test_required_field_with_a_default_must_still_be_written(tmp_path):
    # as SINGA's C++ parser: gamma has a default of 1 but is `required`
    body = HEAD.replace("type: kFixed", "type: kStep step_conf { change_freq: 5 }") \
        + "neuralnet {\n" + DATA + "}\n"
    (e,) = errors_of(tmp_path, body)
    assert at(body, "step_conf") + "updater.learning_rate.step_conf.gamma is required" in e
    body = HEAD + "neuralnet {\n" + DATA.replace("dummy_conf", "lrn_conf { alpha: 1 } dummy_conf") + "}\n"
    text = "\n".join(errors_of(tmp_path, body))
    assert "lrn_conf.local_size is required (job.proto marks it required" in text


def test_param_init_missing_unless_shared_or_from_a_checkpoint(tmp_path):
    layer = ('layer { name: "h" type: kInnerProduct srclayers: "data" innerproduct_conf { num_output: 2 }\n'
             '  param { name: "w" } param { name: "b" init { type: kConstant } } }\n')
    body = HEAD + "neuralnet {\n" + DATA + layer + "}\n"
    text = "\n".join(errors_of(tmp_path, body))
    assert "param 'w' has no init method" in text
    # with a checkpoint (not readable here, so it may hold 'w') it is fine
    load_job(write(tmp_path, HEAD + 'checkpoint_path: "ck"\nneuralnet {\n' + DATA + layer + "}\n"))


def test_unused_phase_problems_are_warnings(tmp_path):
    body = (HEAD + "neuralnet {\n" + DATA
            + 'layer { name: "t" type: kDummy srclayers: "nope" include: kTest }\n}\n')
    job = load_job(write(tmp_path, body))
    (w,) = [w for w in job.warnings if "nope" in w.message]
    assert w.severity == "warning"
    assert "in the test net, which the job does not use (test_steps is 0)" in w.message
    with pytest.raises(ConfigError, match="unknown srclayer 'nope'"):
        load_job(write(tmp_path, body.replace("train_steps: 10", "train_steps: 10\ntest_steps: 3")))


def test_trigger_that_never_fires_is_a_warning(tmp_path):
    job = load_job(write(tmp_path, HEAD + "test_freq: 5\nneuralnet {\n" + DATA + "}\n"))
    assert any("test_freq is 5 but test_steps is 0" in w.message for w in job.warnings)


@pytest.mark.parametrize("field", ["test_freq", "disp_after", "checkpoint_freq", "validate_steps"])
def test_negative_counts(tmp_path, field):
    (e,) = errors_of(tmp_path, HEAD + f"{field}: -1\nneuralnet {{\n" + DATA + "}\n")
    assert f":5:1: {field} must be >= 0, got -1" in e


# ------------------------------------------------------------- data files ---

STORE = ('layer { name: "data" type: kRecordInput store_conf { path: "%s" batchsize: 4 '
         'shape: 3 } }\n')


def test_missing_data_is_a_warning_then_an_error(tmp_path):
    body = HEAD + "neuralnet {\n" + STORE % "d/train.bin" + "}\n"
    path = write(tmp_path, body)
    job = load_job(path)
    (w,) = [w for w in job.warnings if "not found" in w.message]
    assert w.where + ": " == path + at(body, "path")
    assert str(tmp_path / "d" / "train.bin") in w.message
    assert os.path.join(os.getcwd(), "d", "train.bin") in w.message
    for kw in ({"strict": True}, {"submit": True}):
        with pytest.raises(ConfigError, match="data file 'd/train.bin' not found"):
            load_job(path, **kw)


def test_data_resolves_against_the_cwd_then_the_conf_dir(tmp_path):
    path = write(tmp_path, HEAD + "neuralnet {\n" + STORE % "d.bin" + "}\n")
    (tmp_path / "d.bin").write_bytes(b"")  # beside the conf only: the fallback
    job = load_job(path, strict=True)
    assert job.proto.neuralnet.layer[0].store_conf.path == str(tmp_path / "d.bin")
    Path("d.bin").write_bytes(b"")  # in the cwd too: the cwd wins, as in SINGA
    job = load_job(path, strict=True)
    assert job.proto.neuralnet.layer[0].store_conf.path == os.path.join(os.getcwd(), "d.bin")


def test_a_singa_conf_run_from_the_singa_root(tmp_path, monkeypatch):
    """SINGA's confs are written to run from the SINGA root: `singa submit
    examples/rbm/rbm1.conf` there puts `workspace: "examples/rbm/rbm1/"` at
    <root>/examples/rbm/rbm1 (not <root>/examples/rbm/examples/rbm/rbm1),
    where rbm2.conf's checkpoint_path finds it; an input that exists only
    beside the conf still resolves, through the fallback."""
    root = tmp_path / "singa"
    (root / "examples" / "rbm").mkdir(parents=True)
    (root / "examples" / "mnist").mkdir()
    (root / "examples" / "mnist" / "train.bin").write_bytes(b"")
    (root / "examples" / "rbm" / "beside.bin").write_bytes(b"")
    monkeypatch.chdir(root)
    store = STORE.replace('name: "data"', 'name: "%s"')
    body = (HEAD + "neuralnet {\n" + store % ("d1", "examples/mnist/train.bin")
            + store % ("d2", "beside.bin") + "}\n"
            + 'cluster { workspace: "examples/rbm/rbm1/" }\n')
    conf = root / "examples" / "rbm" / "rbm1.conf"
    conf.write_text(body)
    job = load_job("examples/rbm/rbm1.conf", strict=True)
    layers = job.proto.neuralnet.layer
    assert layers[0].store_conf.path == str(root / "examples/mnist/train.bin")
    assert layers[1].store_conf.path == str(root / "examples/rbm/beside.bin")
    assert job.proto.cluster.workspace == str(root / "examples/rbm/rbm1")
    assert job.paths.resolved["cluster.workspace"] == str(root / "examples/rbm/rbm1")
    # the next conf of the chain loads the checkpoint from there
    ckpt = root / "examples/rbm/rbm1/checkpoint/step6-worker0"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    (root / "examples" / "rbm" / "rbm2.conf").write_text(
        HEAD + 'checkpoint_path: "examples/rbm/rbm1/checkpoint/step6-worker0"\n'
        + "neuralnet {\n" + DATA + "}\n" + 'cluster { workspace: "examples/rbm/rbm2/" }\n')
    job2 = load_job("examples/rbm/rbm2.conf", strict=True)
    assert job2.proto.checkpoint_path[0] == str(ckpt)
    assert job2.proto.cluster.workspace == str(root / "examples/rbm/rbm2")


def test_missing_data_of_an_unused_phase_is_not_reported(tmp_path):
    body = HEAD + "neuralnet {\n" + DATA + (STORE % "t.bin").replace("} }", "} include: kTest }")
    body = body.replace('name: "data" type: kRecordInput', 'name: "d2" type: kRecordInput') + "}\n"
    load_job(write(tmp_path, body), strict=True)


def test_output_paths_and_workspace(tmp_path):
    conf_dir = str(tmp_path)
    cwd = os.getcwd()
    # the cwd's path when it or its parent exists there
    assert resolve_output("out.csv", conf_dir) == os.path.join(cwd, "out.csv")
    (tmp_path / "out.csv").write_text("")  # existing beside the conf does not matter
    assert resolve_output("out.csv", conf_dir) == os.path.join(cwd, "out.csv")
    # a parent that exists only beside the conf: the conf dir is the fallback
    (tmp_path / "sub").mkdir()
    assert resolve_output("sub/out.csv", conf_dir) == str(tmp_path / "sub" / "out.csv")
    # a parent that exists nowhere: created under the cwd
    assert resolve_output("new/out.csv", conf_dir) == os.path.join(cwd, "new", "out.csv")
    assert resolve_output("/abs/x", conf_dir) == "/abs/x"
    assert resolve_input("hdfs://n/x", conf_dir) == ("hdfs://n/x", ["hdfs://n/x"], True)
    job = job_pb2.JobProto()
    job.cluster.workspace = "ws"
    rep = resolve_paths(job, str(tmp_path / "j.conf"))
    assert job.cluster.workspace == os.path.join(cwd, "ws") and not rep.workspace_defaulted


# ------------------------------------------------------------ the API ---

def test_missing_or_unreadable_conf_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nope.conf"):
        load_job(str(tmp_path / "nope.conf"))
    with pytest.raises(UserError, match="is a directory"):
        load_job(str(tmp_path))


def test_validate_works_without_a_locator():
    job, _ = parse_text(HEAD + "neuralnet {\n" + DATA
                        + 'layer { name: "x" type: kDummy srclayers: "nope" }\n}\n')
    probs = validate(job)
    (p,) = [p for p in probs if p.severity == "error"]
    assert p.where == "layer 'x'" and "unknown srclayer 'nope'" in p.message
    assert check(job).nets == {}


@pytest.mark.parametrize("comment, warned", [
    ("", True),
    ("  # singa: lr scaled for 2 groups", False),
    ("  # singa: lr scaled for 4 groups", True),   # stale: the group count changed
])
def test_async_conf_with_single_worker_rate_is_warned(tmp_path, comment, warned):
    body = (HEAD.replace("base_lr: 0.1 }", f"base_lr: 0.1{comment}\n}}")
            + "neuralnet {\n" + DATA + "}\ncluster { nworker_groups: 2 }\n")
    job = load_job(write(tmp_path, body))
    msgs = [str(w) for w in job.warnings if "asynchronously" in str(w)]
    assert bool(msgs) == warned
    if warned:
        assert at(body, "base_lr") in msgs[0]
        assert "divided by the number of groups (0.05)" in msgs[0]
        assert "'# singa: lr scaled for 2 groups'" in msgs[0]
    if "4 groups" in comment:
        assert "(the comment says 4)" in msgs[0]


def test_sync_conf_is_not_warned_about_its_rate(tmp_path):
    body = HEAD + "neuralnet {\n" + DATA + "}\ncluster { nworkers_per_group: 2 }\n"
    assert not [w for w in load_job(write(tmp_path, body)).warnings if "asynchronously" in str(w)]


# SINGA v0.3's examples/rnnlm/job.conf names its C++ user layers after its own enum-like names
RNNLM_STYLE = """neuralnet {
  layer { name: "data" user_type: "kData" }
  layer { name: "embedding" user_type: "kEmbedding" srclayers: "data" }
  layer { name: "hidden" user_type: "kHidden" srclayers: "embedding" }
  layer { name: "loss" user_type: "kLoss" srclayers: "hidden" }
}
"""


def test_unknown_user_type_lists_registered_types_nearest_and_module(tmp_path):
    from runtime.neuralnet.layer import Layer
    from runtime.plugins import register_layer

    @register_layer("TvData")
    class WordData(Layer):
        def compute_feature(self, flag, srclayers):
            pass

        def compute_gradient(self, flag, srclayers):
            pass

    body = HEAD + RNNLM_STYLE
    errs = [e for e in errors_of(tmp_path, body) if "layer 'data'" in e]
    assert len(errs) == 1, errs
    msg = errs[0]
    assert at(body, 'user_type: "kData"')[1:] in msg  # located at the user_type
    assert "unknown layer type 'kData' (user_type)" in msg
    assert 'did you mean user_type: "TvData"' in msg
    listed = msg.split("registered user types: ")[1]
    assert "TvData" in listed and "kInnerProduct" in listed
    assert "kData" not in listed  # not the unknown name itself
    assert "--module FILE.py" in msg
    # kEmbedding is a built-in type's name, not a user_type: not listed, and said so
    errs = [e for e in errors_of(tmp_path, HEAD + RNNLM_STYLE.replace('"kData"', '"TvData"'))
            if "layer 'embedding'" in e]
    assert len(errs) == 1, errs
    assert "(kEmbedding is the name of a built-in type, selected by type: kEmbedding)" in errs[0]
    assert "kEmbedding," not in errs[0].split("registered user types: ")[1]


def test_unknown_layer_type_enum_says_where_user_layers_come_from(tmp_path):
    body = HEAD + RNNLM_STYLE.replace('user_type: "kData"', "type: kData")
    errs = errors_of(tmp_path, body)
    assert len(errs) == 1 and at(body, "kData")[1:] in errs[0], errs
    assert "no value named kData" in errs[0]
    assert 'user_type: "kData" and comes from --module FILE.py' in errs[0]
