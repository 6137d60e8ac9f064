"""InnerProduct, the activations, Dropout and Softmax: values against NumPy
references, shapes, gradient checks and the errors bad configs raise."""
import numpy as np
import pytest

from conf import job_pb2
from runtime.errors import LayerError
from runtime.neuralnet import layer_registry
from runtime.neuralnet.neuron_layer import (
    ActivationLayer,
    DropoutLayer,
    InnerProductLayer,
    ReLULayer,
    SigmoidLayer,
    STanhLayer,
)
from runtime.neuralnet.softmax_layer import SoftmaxLayer
from tests.neuralnet.harness import BACK, TRAIN, check_layer, make

TEST = job_pb2.kTest | job_pb2.kForward
rng = np.random.default_rng(7)

IP = ('type: kInnerProduct innerproduct_conf {{ num_output: {n} {extra} }} '
      'param {{ name: "w" }} param {{ name: "b" }}')


def forward(proto_text, x, flag=TRAIN, seed=0):
    """A layer set up on x (one source) after one forward pass, and its sources."""
    layer, srcs = make(proto_text, [x], seed=seed)
    layer.compute_feature(flag, srcs)
    return layer, srcs


def away_from_zero(shape, seed=0):
    """Values with |x| >= 0.1, so that a numeric gradient never straddles a kink."""
    r = np.random.default_rng(seed)
    return (np.sign(r.standard_normal(shape)) * (0.1 + r.random(shape))).astype(np.float32)


# ---------------------------------------------------------- inner product --
def test_inner_product_values_shape_and_gradient():
    x = rng.standard_normal((4, 2, 3))
    check_layer(IP.format(n=5, extra=""), [x], shape=(4, 5), nparams=2)
    layer, _ = forward(IP.format(n=5, extra=""), x)
    assert layer.weight.shape == (5, 6) and layer.bias.shape == (5,)
    ref = x.reshape(4, 6) @ layer.weight.data.T + layer.bias.data
    np.testing.assert_allclose(layer.data, ref, rtol=1e-5, atol=1e-5)
    assert layer.data.dtype == np.float32


def test_inner_product_transpose():
    x = rng.standard_normal((3, 4))
    check_layer(IP.format(n=2, extra="transpose: true"), [x], shape=(3, 2))
    layer, _ = forward(IP.format(n=2, extra="transpose: true"), x)
    assert layer.weight.shape == (4, 2)
    np.testing.assert_allclose(layer.data, x @ layer.weight.data + layer.bias.data,
                               rtol=1e-5, atol=1e-5)


def test_inner_product_agg_grad_accumulates():
    layer, srcs = make(IP.format(n=3, extra=""), [rng.standard_normal((2, 4))])
    layer.compute_feature(TRAIN, srcs)
    layer.grad = rng.standard_normal((2, 3)).astype(np.float32)
    layer.compute_gradient(BACK, srcs)
    once_w, once_b = layer.weight.grad.copy(), layer.bias.grad.copy()
    layer.compute_gradient(BACK, srcs)  # overwrite: unchanged
    np.testing.assert_allclose(layer.weight.grad, once_w)
    layer.compute_gradient(BACK | job_pb2.kAggGrad, srcs)
    np.testing.assert_allclose(layer.weight.grad, 2 * once_w, rtol=1e-6)
    np.testing.assert_allclose(layer.bias.grad, 2 * once_b, rtol=1e-6)


def test_inner_product_feature_partition_divides_num_output():
    layer, _ = make(IP.format(n=10, extra="") + " partition_dim: 1 num_partitions: 2",
                    [np.zeros((4, 6))])
    assert layer.shape == (4, 5) and layer.weight.shape == (5, 6)
    layer, _ = make(IP.format(n=10, extra="") + " partition_dim: 0 num_partitions: 2",
                    [np.zeros((4, 6))])
    assert layer.shape == (4, 10)
    with pytest.raises(LayerError, match="num_output 10 cannot be split over num_partitions 3"):
        make(IP.format(n=10, extra="") + " partition_dim: 1 num_partitions: 3", [np.zeros((4, 6))])


def test_inner_product_is_one_to_all():
    assert InnerProductLayer.src_neuron_connection == 1  # kOneToAll
    assert InnerProductLayer.num_params == 2


@pytest.mark.parametrize("conf, message", [
    ("innerproduct_conf {}", "innerproduct_conf.num_output is required"),
    ("innerproduct_conf { num_output: 0 }", "innerproduct_conf.num_output must be > 0, got 0"),
    ("innerproduct_conf { num_output: -3 }", "must be > 0, got -3"),
])
def test_inner_product_bad_num_output(conf, message):
    with pytest.raises(LayerError, match=message):
        make(f'type: kInnerProduct {conf} param {{name: "w"}} param {{name: "b"}}',
             [np.zeros((2, 3))])


@pytest.mark.parametrize("params, got", [("", "got 0"), ('param {name: "w"}', "got 1 ('w')"),
                                         ('param {name: "w"} param {name: "b"} param {name: "c"}',
                                          "got 3")])
def test_inner_product_needs_exactly_two_params(params, got):
    with pytest.raises(LayerError) as e:
        make(f"type: kInnerProduct innerproduct_conf {{num_output: 2}} {params}",
             [np.zeros((2, 3))])
    assert "a kInnerProduct layer takes 2 params (weight, bias)" in str(e.value)
    assert got in str(e.value)


# ------------------------------------------------------------ activations --
def test_relu_values_and_gradient():
    x = away_from_zero((3, 4))
    check_layer("type: kReLU", [x], shape=(3, 4), nparams=0)
    layer, _ = forward("type: kReLU", x)
    np.testing.assert_array_equal(layer.data, np.maximum(x, 0))


def test_relu_negative_slope_is_honoured():
    x = away_from_zero((3, 4), seed=1)
    check_layer("type: kReLU relu_conf { negative_slope: 0.1 }", [x], shape=(3, 4))
    layer, _ = forward("type: kReLU relu_conf { negative_slope: 0.1 }", x)
    np.testing.assert_allclose(layer.data, np.where(x > 0, x, 0.1 * x), rtol=1e-6)


def test_sigmoid_values_and_gradient():
    x = rng.standard_normal((2, 5)) * 3
    check_layer("type: kSigmoid", [x], shape=(2, 5))
    layer, _ = forward("type: kSigmoid", x)
    np.testing.assert_allclose(layer.data, 1 / (1 + np.exp(-x)), rtol=1e-5, atol=1e-6)
    big = make("type: kSigmoid", [np.array([[-200.0, 200.0]])])
    with np.errstate(all="raise"):
        big[0].compute_feature(TRAIN, big[1])
    np.testing.assert_allclose(big[0].data, [[0, 1]], atol=1e-6)


def test_stanh_values_and_gradient():
    x = rng.standard_normal((2, 5)) * 2
    check_layer("type: kSTanh", [x], shape=(2, 5))
    layer, _ = forward("type: kSTanh", x)
    np.testing.assert_allclose(layer.data, 1.7159047 * np.tanh(0.6666667 * x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind, fn", [
    ("RELU", lambda x: np.maximum(x, 0)),
    ("SIGMOID", lambda x: 1 / (1 + np.exp(-x))),
    ("TANH", np.tanh),
    ("STANH", lambda x: 1.7159047 * np.tanh(0.6666667 * x)),
])
@pytest.mark.parametrize("layer_type", ["kActivation", "kCudnnActivation"])
def test_activation_types(kind, fn, layer_type):
    x = away_from_zero((2, 3, 2), seed=2)
    check_layer(f"type: {layer_type} activation_conf {{ type: {kind} }}", [x],
                shape=(2, 3, 2))
    layer, _ = forward(f"type: {layer_type} activation_conf {{ type: {kind} }}", x)
    np.testing.assert_allclose(layer.data, fn(x), rtol=1e-5, atol=1e-6)


def test_activation_in_place_with_share_src_blobs():
    x = away_from_zero((2, 4), seed=3)
    layer, srcs = make("type: kActivation activation_conf { type: TANH } share_src_blobs: true",
                       [x.copy()])
    layer.compute_feature(TRAIN, srcs)
    assert layer.data is srcs[0].data  # the source's array, overwritten
    np.testing.assert_allclose(layer.data, np.tanh(x), rtol=1e-6)
    g = rng.standard_normal((2, 4)).astype(np.float32)
    layer.grad = g.copy()
    layer.compute_gradient(BACK, srcs)
    np.testing.assert_allclose(srcs[0].grad, g * (1 - np.tanh(x) ** 2), rtol=1e-5, atol=1e-6)


def test_activation_registrations():
    assert layer_registry.get(job_pb2.kCudnnActivation) is ActivationLayer
    assert layer_registry.get(job_pb2.kReLU) is ReLULayer
    assert layer_registry.get(job_pb2.kSigmoid) is SigmoidLayer
    assert layer_registry.get(job_pb2.kSTanh) is STanhLayer
    assert layer_registry.get(job_pb2.kDropout) is DropoutLayer


# ---------------------------------------------------------------- dropout --
def test_dropout_train_is_inverted_and_test_copies():
    x = np.ones((100, 100), np.float32)
    layer, srcs = make("type: kDropout dropout_conf { dropout_ratio: 0.3 }", [x])
    layer.compute_feature(TRAIN, srcs)
    kept = layer.data != 0
    assert 0.67 < kept.mean() < 0.73
    np.testing.assert_allclose(layer.data[kept], 1 / 0.7, rtol=1e-6)
    layer.grad = np.full_like(x, 2.0)
    layer.compute_gradient(BACK, srcs)
    np.testing.assert_allclose(srcs[0].grad, np.where(kept, 2 / 0.7, 0), rtol=1e-6)

    layer.compute_feature(TEST, srcs)
    np.testing.assert_array_equal(layer.data, x)
    assert layer.data is not x
    layer.compute_gradient(job_pb2.kTest | job_pb2.kBackward, srcs)
    np.testing.assert_array_equal(srcs[0].grad, layer.grad)


def test_dropout_mask_comes_from_layer_rng():
    x = rng.standard_normal((8, 8))
    a, sa = make("type: kDropout", [x], seed=5)
    b, sb = make("type: kDropout", [x], seed=5)
    a.compute_feature(TRAIN, sa)
    b.compute_feature(TRAIN, sb)
    np.testing.assert_array_equal(a.data, b.data)
    a.compute_feature(TRAIN, sa)
    assert not np.array_equal(a.data, b.data)


def test_dropout_gradient():
    check_layer("type: kDropout dropout_conf { dropout_ratio: 0.4 }",
                [rng.standard_normal((3, 5))], shape=(3, 5), reseed_each_call=True)


@pytest.mark.parametrize("ratio", ["1.0", "-0.1", "1.5"])
def test_dropout_bad_ratio(ratio):
    with pytest.raises(LayerError, match=r"dropout_conf.dropout_ratio must be in \[0, 1\), got"):
        make(f"type: kDropout dropout_conf {{ dropout_ratio: {ratio} }}", [np.zeros((2, 2))])


# ---------------------------------------------------------------- softmax --
def softmax_ref(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_softmax_values_and_gradient():
    x = rng.standard_normal((3, 5)) * 2
    check_layer("type: kSoftmax", [x], shape=(3, 5))
    layer, _ = forward("type: kSoftmax", x)
    np.testing.assert_allclose(layer.data, softmax_ref(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.data.sum(axis=1), 1, rtol=1e-6)
    assert SoftmaxLayer.src_neuron_connection == 1  # kOneToAll


def test_softmax_large_inputs_are_stable():
    layer, srcs = make("type: kCudnnSoftmax", [np.array([[1000.0, 1000.0, -1000.0]])])
    layer.compute_feature(TEST, srcs)
    np.testing.assert_allclose(layer.data, [[0.5, 0.5, 0.0]], atol=1e-7)


def test_softmax_groups_per_instance():
    x = rng.standard_normal((2, 3, 4))  # 12 features, 3 groups of 4
    check_layer("type: kSoftmax softmax_conf { num_softmax_per_instance: 3 }", [x],
                shape=(2, 3, 4))
    layer, _ = forward("type: kSoftmax softmax_conf { num_softmax_per_instance: 3 }", x)
    np.testing.assert_allclose(layer.data, softmax_ref(x.reshape(2, 3, 4)), rtol=1e-5, atol=1e-6)


def test_softmax_groups_must_divide_features():
    with pytest.raises(LayerError, match="num_softmax_per_instance must be a positive divisor "
                                         "of the 10 features per instance, got 3"):
        make("type: kSoftmax softmax_conf { num_softmax_per_instance: 3 }", [np.zeros((2, 10))])
