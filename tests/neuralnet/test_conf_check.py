"""Layers own their conf checks: `Layer.check_conf` is the one place a layer
type's rules are written; `singa validate` and the net builder both use it."""
from google.protobuf import text_format

from conf import job_pb2
from runtime.config.validate import validate
from runtime.errors import ConfigError
from runtime.neuralnet.conf_check import ConfProblem
from runtime.neuralnet.layer import Layer, layer_registry
from runtime.neuralnet.net import NeuralNet


def _layer(text: str) -> job_pb2.LayerProto:
    return text_format.Parse(text, job_pb2.LayerProto())


def test_each_type_checks_its_own_conf():
    ip = layer_registry.lookup(job_pb2.kInnerProduct, "")
    assert ip.check_conf(_layer('name: "ip" type: kInnerProduct')) == [
        ConfProblem("type", "a kInnerProduct layer needs innerproduct_conf { num_output: N }")]
    assert ip.check_conf(_layer('name: "ip" type: kInnerProduct innerproduct_conf { num_output: 0 }')) \
        == [ConfProblem("innerproduct_conf.num_output", "innerproduct_conf.num_output must be > 0, got 0",
                        about="innerproduct_conf.num_output")]
    assert ip.check_conf(_layer('name: "ip" type: kInnerProduct innerproduct_conf { num_output: 3 }')) == []
    # a layer with no rules of its own has none; the cuDNN variant is checked as its CPU layer
    assert Layer.check_conf(_layer('name: "x" type: kReLU')) == []
    conv = layer_registry.lookup(job_pb2.kCudnnConv, "")
    found = conv.check_conf(_layer('name: "c" type: kCudnnConv convolution_conf '
                                   '{ num_filters: 2 kernel: 0 }'))
    assert [p.field for p in found] == ["convolution_conf.kernel"]


def test_an_optional_backend_is_an_error_only_on_submit():
    rec = layer_registry.lookup(job_pb2.kRecordInput, "")
    proto = _layer('name: "d" type: kRecordInput store_conf { backend: "lmdb" path: "x" batchsize: 2 '
                   'shape: 3 }')
    assert [p.severity for p in rec.check_conf(proto)] == ["warning"]
    assert [p.severity for p in rec.check_conf(proto, submit=True)] == ["error"]


def test_builder_and_validate_report_the_same_rule():
    text = ('layer { name: "d" type: kDummy dummy_conf { input: true shape: 2 shape: 3 } }'
            'layer { name: "ip" type: kInnerProduct srclayers: "d" innerproduct_conf { num_output: -1 } '
            'param { name: "w" init { type: kConstant } } param { name: "b" init { type: kConstant } } }')
    net = text_format.Parse(text, job_pb2.NetProto())
    try:
        NeuralNet.create(net, job_pb2.kTrain, allocate=False)
        raise AssertionError("the builder accepted num_output -1")
    except ConfigError as e:
        built = [p.message for p in e.problems]
    assert "innerproduct_conf.num_output must be > 0, got -1" in built
    job = text_format.Parse('name: "j" train_steps: 1 train_one_batch { alg: kBP } '
                            'updater { type: kSGD learning_rate { type: kFixed base_lr: 0.1 } } '
                            'cluster { workspace: "/tmp/x" } neuralnet { ' + text + ' }', job_pb2.JobProto())
    messages = [p.message for p in validate(job) if p.severity == "error"]
    assert "layer 'ip': innerproduct_conf.num_output must be > 0, got -1" in messages
