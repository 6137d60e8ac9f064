"""LRN and BatchNorm: values against direct formulas, running statistics,
gradient checks and the errors bad configs raise."""
import numpy as np
import pytest

from conf import job_pb2
from runtime.errors import LayerError
from runtime.neuralnet import layer_registry, norm_layer
from runtime.neuralnet.norm_layer import BN_EPSILON, BN_MOMENTUM, BatchNormLayer, LRNLayer
from tests.neuralnet.harness import BACK, TRAIN, check_layer, make

TEST = job_pb2.kTest | job_pb2.kForward
rng = np.random.default_rng(3)


def forward(proto_text, x, flag=TRAIN):
    layer, srcs = make(proto_text, [x])
    layer.compute_feature(flag, srcs)
    return layer, srcs


# -------------------------------------------------------------------- LRN --
def lrn_direct(x, size, alpha, beta, knorm):
    """The formula, channel by channel."""
    x = x.astype(np.float64)
    c = x.shape[1]
    half = size // 2
    y = np.empty_like(x)
    for ch in range(c):
        lo, hi = max(0, ch - half), min(c, ch + half + 1)
        norm = knorm + alpha / size * np.sum(x[:, lo:hi] ** 2, axis=1)
        y[:, ch] = x[:, ch] * norm ** (-beta)
    return y


@pytest.fixture(params=["one block", "many blocks"])
def blocks(request, monkeypatch):
    """Run an LRN test with the batch in one block and in blocks of one instance."""
    if request.param == "many blocks":
        monkeypatch.setattr(norm_layer, "LRN_BLOCK_FLOATS", 1)
    return request.param


@pytest.mark.parametrize("conf, args", [
    ("local_size: 3 alpha: 0.5 beta: 0.75 knorm: 2", (3, 0.5, 0.75, 2.0)),
    ("local_size: 5 alpha: 0.0001 beta: 0.75", (5, 1e-4, 0.75, 1.0)),
    ("local_size: 1 alpha: 1 beta: 0.5 knorm: 1", (1, 1.0, 0.5, 1.0)),
    ("local_size: 9 alpha: 0.5 beta: 0.75 knorm: 2", (9, 0.5, 0.75, 2.0)),  # wider than C
])
def test_lrn_matches_direct_formula(conf, args, blocks):
    x = rng.standard_normal((3, 7, 3, 2)).astype(np.float32) * 2
    layer, _ = forward(f"type: kLRN lrn_conf {{ {conf} }}", x)
    assert layer.shape == x.shape
    np.testing.assert_allclose(layer.data, lrn_direct(x, *args), rtol=1e-5, atol=1e-6)


def test_lrn_defaults():
    x = rng.standard_normal((2, 6, 2, 2)).astype(np.float32)
    layer, _ = forward("type: kCudnnLRN lrn_conf { }", x)  # local_size 5, alpha 1, beta 0.75, knorm 1
    np.testing.assert_allclose(layer.data, lrn_direct(x, 5, 1.0, 0.75, 1.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("conf", ["local_size: 3 alpha: 0.5 beta: 0.75 knorm: 2",
                                  "local_size: 5 alpha: 1 beta: 0.75",
                                  "local_size: 7 alpha: 1 beta: 0.75"])
def test_lrn_gradient(conf, blocks):
    check_layer(f"type: kLRN lrn_conf {{ {conf} }}", [rng.standard_normal((2, 6, 2, 3))],
                shape=(2, 6, 2, 3), nparams=0)


def test_lrn_two_dimensional_source():
    x = rng.standard_normal((3, 8)).astype(np.float32)
    layer, _ = forward("type: kLRN lrn_conf { local_size: 3 }", x)
    np.testing.assert_allclose(layer.data, lrn_direct(x, 3, 1.0, 0.75, 1.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [4, 0, -3])
def test_lrn_local_size_must_be_odd_and_positive(size):
    with pytest.raises(LayerError, match=rf"lrn_conf.local_size must be a positive odd number "
                                         rf"\(the window is centred on each channel\), got {size}"):
        make(f"type: kLRN lrn_conf {{ local_size: {size} }}", [np.zeros((1, 4, 2, 2))])


def test_lrn_registrations():
    assert layer_registry.get(job_pb2.kLRN) is LRNLayer
    assert layer_registry.get(job_pb2.kCudnnLRN) is LRNLayer


# ------------------------------------------------------------- batch norm --
BM = ('type: {t} bm_conf {{ }} param {{ name: "s" }} param {{ name: "b" }} '
      'param {{ name: "m" lr_scale: 0 wd_scale: 0 }} param {{ name: "v" lr_scale: 0 wd_scale: 0 }}')


def bn_ref(x, scale, bias, axes):
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return scale * (x - mean) / np.sqrt(var + BN_EPSILON) + bias


def test_batchnorm_train_values_and_running_stats():
    x = (rng.standard_normal((4, 3, 2, 2)) * 3 + 1).astype(np.float32)
    layer, srcs = make(BM.format(t="kBM"), [x])
    assert [p.shape for p in layer.params] == [(1, 3, 1, 1)] * 4
    layer.mean.data[...] = 0
    layer.var.data[...] = 1
    layer.compute_feature(TRAIN, srcs)
    ref = bn_ref(x.astype(np.float64), layer.scale.data, layer.bias.data, (0, 2, 3))
    np.testing.assert_allclose(layer.data, ref, rtol=1e-4, atol=1e-5)
    m = 4 * 2 * 2
    np.testing.assert_allclose(layer.mean.data, BN_MOMENTUM * x.mean(axis=(0, 2, 3), keepdims=True),
                               rtol=1e-5)
    unbiased = x.astype(np.float64).var(axis=(0, 2, 3), keepdims=True) * m / (m - 1)
    np.testing.assert_allclose(layer.var.data, (1 - BN_MOMENTUM) + BN_MOMENTUM * unbiased,
                               rtol=1e-5)


def test_batchnorm_test_phase_uses_running_stats():
    x = rng.standard_normal((5, 3, 2, 2)).astype(np.float32)
    layer, srcs = make(BM.format(t="kCudnnBM"), [x])
    mean = np.array([0.5, -1.0, 2.0], np.float32).reshape(1, 3, 1, 1)
    var = np.array([4.0, 0.25, 1.0], np.float32).reshape(1, 3, 1, 1)
    layer.mean.data[...] = mean
    layer.var.data[...] = var
    layer.compute_feature(TEST, srcs)
    ref = layer.scale.data * (x - mean) / np.sqrt(var + BN_EPSILON) + layer.bias.data
    np.testing.assert_allclose(layer.data, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(layer.mean.data, mean)  # unchanged outside training
    np.testing.assert_array_equal(layer.var.data, var)
    layer.grad = np.ones(layer.shape, np.float32)
    layer.compute_gradient(job_pb2.kTest | job_pb2.kBackward, srcs)
    np.testing.assert_allclose(srcs[0].grad, np.broadcast_to(
        layer.scale.data / np.sqrt(var + BN_EPSILON), x.shape), rtol=1e-5)


def test_batchnorm_gradient_4d():
    layer = check_layer(BM.format(t="kBM"), [rng.standard_normal((3, 2, 2, 2))],
                        shape=(3, 2, 2, 2), nparams=4)
    assert not np.any(layer.mean.grad) and not np.any(layer.var.grad)


def test_batchnorm_gradient_2d():
    layer = check_layer(BM.format(t="kBM"), [rng.standard_normal((5, 3))], shape=(5, 3), nparams=4)
    assert [p.shape for p in layer.params] == [(1, 3)] * 4


def test_batchnorm_running_stats_are_not_trainable():
    layer, srcs = forward(BM.format(t="kBM"), rng.standard_normal((4, 2, 1, 1)))
    assert [getattr(p, "trainable", True) for p in layer.params] == [True, True, False, False]
    layer.grad = np.ones(layer.shape, np.float32)
    layer.mean.grad[...] = 7  # whatever was there, the layer writes zeros
    layer.compute_gradient(BACK | job_pb2.kAggGrad, srcs)
    assert not np.any(layer.mean.grad) and not np.any(layer.var.grad)


def test_batchnorm_registrations():
    assert layer_registry.get(job_pb2.kBM) is BatchNormLayer
    assert layer_registry.get(job_pb2.kCudnnBM) is BatchNormLayer


@pytest.mark.parametrize("params", ['', 'param { name: "s" } param { name: "b" } param { name: "m" }'])
def test_batchnorm_needs_four_params(params):
    n = params.count("param")
    with pytest.raises(LayerError, match=rf"a kBM layer takes 4 params \(scale, bias, running mean, "
                                         rf"running variance\), got {n}"):
        make(f"type: kBM {params}", [np.zeros((2, 3, 2, 2))])


def test_batchnorm_needs_2d_or_4d_source():
    with pytest.raises(LayerError, match=r"4-D \(N, C, H, W\) or 2-D \(N, D\) source, got shape "
                                         r"\(2, 3, 4\)"):
        make(BM.format(t="kBM"), [np.zeros((2, 3, 4))])
