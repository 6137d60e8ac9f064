"""RBMVis and RBMHid: shapes, phases, sampling, the reconstruction error, the
CD gradient against the free energy (computed here independently, by finite
differences), and the errors bad configs raise."""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from conf import job_pb2
from runtime.errors import ConfigError, LayerError
from runtime.neuralnet import create_layer, layer_registry
from runtime.neuralnet.net import NeuralNet
from runtime.neuralnet.rbm_layer import RBMHidLayer, RBMVisLayer
from tests.neuralnet.harness import Source

POS = job_pb2.kPositive | job_pb2.kForward
NEG = job_pb2.kNegative | job_pb2.kForward
NEG_TEST = NEG | job_pb2.kTest
BACK = job_pb2.kTrain | job_pb2.kBackward

VIS = ('name: "vis" type: kRBMVis srclayers: "src0" srclayers: "hid" rbm_conf {{ hdim: {h} }} '
       'param {{ name: "w" }} param {{ name: "bv" }}')
HID = ('name: "hid" type: kRBMHid srclayers: "vis" rbm_conf {{ hdim: {h} {g} }} '
       'param {{ name: "w_" share_from: "{share}" }} param {{ name: "bh" }}')


def layer(text: str):
    return create_layer(text_format.Parse(text, job_pb2.LayerProto()))


def rbm(x: np.ndarray, hdim: int = 3, gaussian: bool = False, seed: int = 0,
        vis_hdim: int | None = None, share: str = "w"):
    """A vis/hid pair on data x, set up as the net does (vis first), with
    random params; the hid's W is the vis's array (share_from)."""
    src = Source("src0", x)
    vis = layer(VIS.format(h=vis_hdim or hdim))
    hid = layer(HID.format(h=hdim, g="gaussian: true" if gaussian else "", share=share))
    vis.setup([src, hid])
    hid.setup([vis])
    r = np.random.default_rng(seed)
    for p in vis.params + hid.params:
        p.allocate()
        p.data[...] = r.standard_normal(p.shape).astype(np.float32) * 0.5
    hid.weight.share_from(vis.weight)
    vis.rng = hid.rng = np.random.default_rng(seed + 1)
    return src, vis, hid


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def record_samples(hid: RBMHidLayer) -> list[np.ndarray]:
    """Copies of every sample the hid hands out."""
    seen: list[np.ndarray] = []
    orig = hid.sample

    def sample(flag):
        s = orig(flag)
        seen.append(s.astype(np.float64).copy())
        return s

    hid.sample = sample  # type: ignore[method-assign]  # the test watches the samples
    return seen


def cd1(src, vis, hid):
    """One CD-1 pass as the CD worker runs it, then the gradients."""
    vis.compute_feature(POS, [src, hid])
    hid.compute_feature(POS, [vis])
    vis.compute_feature(NEG_TEST, [src, hid])
    hid.compute_feature(NEG, [vis])
    vis.compute_gradient(BACK, [src, hid])
    hid.compute_gradient(BACK, [vis])


# ------------------------------------------------------------- set up ---
def test_registered_shapes_and_params():
    assert layer_registry.lookup(job_pb2.kRBMVis, "") is RBMVisLayer
    assert layer_registry.lookup(job_pb2.kRBMHid, "") is RBMHidLayer
    x = np.random.default_rng(0).random((5, 1, 2, 3))
    _, vis, hid = rbm(x, hdim=4)
    assert vis.shape == (5, 6) and hid.shape == (5, 4)
    assert [p.shape for p in vis.params] == [(4, 6), (6,)]
    assert [p.shape for p in hid.params] == [(4, 6), (4,)]
    # W is updated once, from the vis's gradient: the hid's copy is not sent
    assert vis.weight.trainable and not hid.weight.trainable and hid.bias.trainable


def test_positive_phase_values_bernoulli_and_gaussian():
    x = np.random.default_rng(1).random((4, 5)).astype(np.float32)
    for gaussian in (False, True):
        src, vis, hid = rbm(x, hdim=3, gaussian=gaussian)
        vis.compute_feature(POS, [src, hid])
        hid.compute_feature(POS, [vis])
        np.testing.assert_array_equal(vis.data, x)
        lin = x.astype(np.float64) @ vis.weight.data.T + hid.bias.data
        np.testing.assert_allclose(hid.data, lin if gaussian else sigmoid(lin), rtol=1e-5,
                                   atol=1e-6)
        # a flag with neither phase bit is the positive phase too (a plain forward pass)
        hid.compute_feature(job_pb2.kTest | job_pb2.kForward, [vis])
        np.testing.assert_allclose(hid.data, lin if gaussian else sigmoid(lin), rtol=1e-5,
                                   atol=1e-6)


def test_net_builder_orders_the_pair_and_adds_no_split():
    net = text_format.Parse("""
      layer { name: "data" type: kDummy dummy_conf { input: true shape: 4 shape: 6 } }
      layer { name: "ip" type: kInnerProduct srclayers: "data" innerproduct_conf { num_output: 5 }
              param { name: "w1" init { type: kGaussian } } param { name: "b1" init { type: kConstant } } }
      layer { name: "hid" type: kRBMHid srclayers: "vis" rbm_conf { hdim: 3 }
              param { name: "w2_" share_from: "w2" } param { name: "b22" init { type: kConstant } } }
      layer { name: "vis" type: kRBMVis srclayers: "ip" srclayers: "hid" rbm_conf { hdim: 3 }
              param { name: "w2" init { type: kGaussian } } param { name: "b21" init { type: kConstant } } }
      layer { name: "top" type: kSigmoid srclayers: "hid" }
    """, job_pb2.NetProto())
    n = NeuralNet.create(net, job_pb2.kTrain)
    assert [l.name for l in n.layers] == ["data", "ip", "vis", "hid", "top"]
    assert n.srclayers(n.layer("hid"))[0] is n.layer("vis")  # no split(vis) in between
    assert n.param("w2_").data is n.param("w2").data


# ------------------------------------------------------------- errors ---
def test_hid_must_share_the_vis_weight():
    x = np.zeros((2, 4))
    with pytest.raises(LayerError, match=r"param 'w_' \(the weight, position 1\) must "
                                         r"share_from \"w\".*got share_from \"other\""):
        rbm(x, share="other")
    with pytest.raises(LayerError, match=r"rbm_conf.hdim is 3 but its kRBMVis 'vis' has hdim 4"):
        rbm(x, hdim=3, vis_hdim=4)


def test_bad_sources_and_missing_hdim():
    src = Source("src0", np.zeros((2, 4)))
    other = Source("src1", np.zeros((2, 4)))
    vis = layer(VIS.format(h=3))
    with pytest.raises(LayerError, match="its input layer and its kRBMHid layer"):
        vis.setup([src, other])
    hid = layer(HID.format(h=3, g="", share="w"))
    with pytest.raises(LayerError, match="takes its kRBMVis layer as its srclayer, got 'src0'"):
        hid.setup([src])
    nohdim = layer('name: "v" type: kRBMVis param { name: "w" } param { name: "b" }')
    with pytest.raises(LayerError, match=r"rbm_conf.hdim is required"):
        nohdim.setup([src, hid])


def test_conf_errors_reach_the_net_builder_with_the_layer_named():
    net = text_format.Parse("""
      layer { name: "data" type: kDummy dummy_conf { input: true shape: 2 shape: 4 } }
      layer { name: "vis" type: kRBMVis srclayers: "data" srclayers: "hid" rbm_conf { hdim: 3 }
              param { name: "w" init { type: kGaussian } } param { name: "b1" init { type: kConstant } } }
      layer { name: "hid" type: kRBMHid srclayers: "vis" rbm_conf { hdim: 3 }
              param { name: "w_" init { type: kGaussian } } param { name: "b2" init { type: kConstant } } }
    """, job_pb2.NetProto())
    with pytest.raises(ConfigError, match=r"layer 'hid'.*must share_from \"w\".*no share_from"):
        NeuralNet.create(net, job_pb2.kTrain)


# ----------------------------------------------------------- sampling ---
def test_sample_source_follows_the_first_gibbs_rule():
    x = np.random.default_rng(2).random((3, 4))
    src, vis, hid = rbm(x, hdim=5)
    vis.compute_feature(POS, [src, hid])
    hid.compute_feature(POS, [vis])
    hid.pos_data[...] = 1.0   # p = 1 always samples 1, p = 0 always 0
    hid.neg_data = np.zeros_like(hid.pos_data)
    # the first Gibbs step samples the positive phase, even with a negative flag
    assert hid.first_gibbs and np.all(hid.sample(NEG) == 1)
    hid.first_gibbs = False  # as after the hid's first negative pass
    assert np.all(hid.sample(NEG) == 0)
    assert np.all(hid.sample(POS) == 1)


def test_negative_pass_clears_first_gibbs_on_both_layers():
    x = np.random.default_rng(2).random((3, 4))
    src, vis, hid = rbm(x)
    vis.compute_feature(POS, [src, hid])
    hid.compute_feature(POS, [vis])
    assert vis.first_gibbs and hid.first_gibbs
    vis.compute_feature(NEG, [src, hid])
    hid.compute_feature(NEG, [vis])
    assert not vis.first_gibbs and not hid.first_gibbs
    vis.compute_feature(POS, [src, hid])
    hid.compute_feature(POS, [vis])
    assert vis.first_gibbs and hid.first_gibbs


def test_bernoulli_and_gaussian_samples_have_the_right_law():
    x = np.random.default_rng(3).random((4000, 3)).astype(np.float32)
    src, vis, hid = rbm(x, hdim=2)
    vis.compute_feature(POS, [src, hid])
    hid.compute_feature(POS, [vis])
    s = hid.sample(POS)
    assert set(np.unique(s)) <= {0.0, 1.0}
    # E[s] = p: the mean sample minus the mean probability is within 5 sigma
    p = hid.pos_data.astype(np.float64)
    sigma = np.sqrt((p * (1 - p)).sum(axis=0)) / len(p)
    assert np.all(np.abs(s.mean(axis=0) - p.mean(axis=0)) < 5 * sigma)
    src, vis, hid = rbm(x, hdim=2, gaussian=True)
    vis.compute_feature(POS, [src, hid])
    hid.compute_feature(POS, [vis])
    noise = hid.sample(POS).astype(np.float64) - hid.pos_data
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1.0) < 0.05


def test_sampling_is_reproducible_from_the_layer_rng():
    x = np.random.default_rng(4).random((6, 5))
    a = rbm(x, seed=3)
    b = rbm(x, seed=3)
    for src, vis, hid in (a, b):
        cd1(src, vis, hid)
    np.testing.assert_array_equal(a[1].weight.grad, b[1].weight.grad)
    np.testing.assert_array_equal(a[2].bias.grad, b[2].bias.grad)


# ------------------------------------------------------------ metrics ---
def test_squared_error_is_recorded_on_negative_test_passes_only():
    x = np.random.default_rng(5).random((4, 6)).astype(np.float32)
    src, vis, hid = rbm(x)
    assert vis.metrics() == {}
    errs = []
    for _ in range(2):
        vis.compute_feature(POS, [src, hid])
        hid.compute_feature(POS, [vis])
        vis.compute_feature(NEG_TEST, [src, hid])
        errs.append(float(np.sum((x.astype(np.float64) - vis.neg_data) ** 2)) / 4)
        hid.compute_feature(NEG, [vis])
        vis.compute_feature(NEG, [src, hid])  # a 2nd Gibbs step records nothing
    # the average per batch (SINGA divides by every ComputeFeature call instead)
    assert vis.metrics() == pytest.approx({"squared_error": (errs[0] + errs[1]) / 2}, rel=1e-6)
    assert vis.display() == "Squared Error = %f" % ((errs[0] + errs[1]) / 2)
    vis.reset_metrics()
    assert vis.metrics() == {}


# ------------------------------------------- the CD gradient, independently ---
def free_energy(v: np.ndarray, W: np.ndarray, b: np.ndarray, c: np.ndarray,
                gaussian: bool) -> float:
    """Mean free energy of the rows of v: F(v) = -b.v - sum_j f(c_j + W_j.v),
    f = softplus for Bernoulli hidden units, x^2/2 for unit-variance Gaussian ones."""
    a = v @ W.T + c
    hidden = 0.5 * a * a if gaussian else np.logaddexp(0.0, a)
    return float(np.mean(-(v @ b) - hidden.sum(axis=1)))


@pytest.mark.parametrize("gaussian", [False, True])
def test_cd1_gradient_is_the_free_energy_difference(gaussian):
    """CD-1's gradient is d/dtheta [mean F(v_pos) - mean F(v_neg)] with v_neg
    held fixed; v_neg = sigmoid(s W + b) for the hid's sample s. Both are
    computed here in float64 from the params and the sample alone."""
    rng = np.random.default_rng(6)
    x = (rng.random((5, 4)) < 0.5).astype(np.float32)
    src, vis, hid = rbm(x, hdim=3, gaussian=gaussian, seed=11)
    seen = record_samples(hid)
    cd1(src, vis, hid)
    assert len(seen) == 1
    s = seen[0]
    W = vis.weight.data.astype(np.float64)
    b = vis.bias.data.astype(np.float64)
    c = hid.bias.data.astype(np.float64)
    v_pos = x.astype(np.float64)
    v_neg = sigmoid(s @ W + b)
    np.testing.assert_allclose(vis.neg_data, v_neg, rtol=1e-5, atol=1e-6)
    lin = v_neg @ W.T + c
    np.testing.assert_allclose(hid.neg_data, lin if gaussian else sigmoid(lin),
                               rtol=1e-5, atol=1e-6)

    def objective(W, b, c):
        return free_energy(v_pos, W, b, c, gaussian) - free_energy(v_neg, W, b, c, gaussian)

    eps = 1e-6
    for name, arr, got in (("W", W, vis.weight.grad), ("b_vis", b, vis.bias.grad),
                           ("b_hid", c, hid.bias.grad)):
        num = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + eps
            up = objective(W, b, c)
            arr[i] = old - eps
            down = objective(W, b, c)
            arr[i] = old
            num[i] = (up - down) / (2 * eps)
        np.testing.assert_allclose(got, num, rtol=1e-4, atol=1e-5, err_msg=name)
    # the hid computes no W gradient of its own
    assert not hid.weight.grad.any()


def test_gradient_with_kaggrad_accumulates():
    x = np.random.default_rng(7).random((3, 4))
    src, vis, hid = rbm(x)
    cd1(src, vis, hid)
    g = vis.weight.grad.copy(), vis.bias.grad.copy(), hid.bias.grad.copy()
    vis.compute_gradient(BACK | job_pb2.kAggGrad, [src, hid])
    hid.compute_gradient(BACK | job_pb2.kAggGrad, [vis])
    for a, p in zip(g, (vis.weight, vis.bias, hid.bias)):
        np.testing.assert_allclose(p.grad, 2 * a, rtol=1e-6)


def test_negative_pass_before_positive_is_a_clear_error():
    src, vis, hid = rbm(np.zeros((2, 3)))
    with pytest.raises(LayerError, match="before a positive pass"):
        vis.compute_feature(NEG, [src, hid])
