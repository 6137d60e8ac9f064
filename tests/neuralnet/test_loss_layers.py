"""SoftmaxLoss and EuclideanLoss: values, metrics averaging, display strings,
label checks and numeric gradient checks."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import LayerError, UserError
from tests.neuralnet.harness import BACK, TRAIN, Source, check_layer, make


def softmax_ref(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_softmax_loss_values():
    x = np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 0.0]], np.float32)
    labels = np.array([2, 1])
    layer, srcs = make("type: kSoftmaxLoss", [x, Source("lbl", np.zeros(2), labels)])
    layer.compute_feature(TRAIN, srcs)
    p = softmax_ref(x.astype(np.float64))
    expected = -np.mean(np.log(p[[0, 1], labels]))
    assert layer.last_loss == pytest.approx(expected, rel=1e-5)
    assert layer.metrics() == pytest.approx({"loss": expected, "accuracy": 0.5}, rel=1e-5)
    layer.compute_gradient(BACK, srcs)
    onehot = np.eye(3)[labels]
    np.testing.assert_allclose(srcs[0].grad, (p - onehot) / 2, rtol=1e-5, atol=1e-7)


def test_softmax_loss_is_stable_for_large_logits():
    x = np.array([[1000.0, 0.0], [0.0, -1000.0]], np.float32)
    layer, srcs = make("type: kSoftmaxLoss", [x, Source("lbl", np.zeros(2), np.array([1, 0]))])
    layer.compute_feature(TRAIN, srcs)
    # p_label underflows to 0 for the first instance: clamped at FLT_MIN
    flt_min_loss = -np.log(np.finfo(np.float32).tiny)
    assert np.isfinite(layer.last_loss)
    assert layer.last_loss == pytest.approx((flt_min_loss + 0.0) / 2, rel=1e-4)


def test_topk_hits_counts_a_nan_or_infinite_score_as_a_miss():
    from runtime.neuralnet.loss_layer import topk_hits

    nan, inf = np.float32("nan"), np.float32("inf")
    scores = np.array([[nan, nan, nan],        # every score NaN (a diverged net)
                       [0.1, nan, 0.2],        # the truth's score is NaN
                       [0.9, 0.1, nan],        # another score is NaN
                       [inf, 0.1, 0.2],        # the truth's score is inf
                       [0.1, -inf, 0.2],       # another score is -inf
                       [0.7, 0.1, 0.2]], np.float32)  # a finite hit
    labels = np.array([0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(topk_hits(scores, labels, 1), [False] * 5 + [True])
    np.testing.assert_array_equal(topk_hits(scores, labels, 3), [False] * 5 + [True])


def test_softmax_loss_of_nan_logits_is_nan_with_accuracy_zero():
    x = np.full((2, 3), np.nan, np.float32)
    layer, srcs = make("type: kSoftmaxLoss", [x, Source("lbl", np.zeros(2), np.array([0, 2]))])
    layer.compute_feature(TRAIN, srcs)
    m = layer.metrics()
    assert np.isnan(m["loss"]) and m["accuracy"] == 0.0
    assert layer.display() == "Loss = nan, accuracy = 0.000000"


def test_softmax_loss_topk_and_scale():
    x = np.array([[0.1, 0.5, 0.3, 0.2], [0.9, 0.1, 0.3, 0.2], [0.0, 0.1, 0.2, 0.3]], np.float32)
    labels = np.array([2, 2, 0])  # ranks 2, 2 and 4 (1-based)
    layer, srcs = make("type: kSoftmaxLoss softmaxloss_conf {topk: 2 scale: 0.5}",
                       [x, Source("lbl", np.zeros(3), labels)])
    layer.compute_feature(TRAIN, srcs)
    assert layer.metrics()["accuracy"] == pytest.approx(2 / 3 * 0.5)
    p = softmax_ref(x.astype(np.float64))
    assert layer.last_loss == pytest.approx(-np.mean(np.log(p[[0, 1, 2], labels])) * 0.5, rel=1e-5)


def test_softmax_loss_metrics_average_over_calls_and_reset():
    x1 = np.array([[5.0, 0.0], [5.0, 0.0]], np.float32)   # both right for label 0
    x2 = np.array([[0.0, 5.0], [5.0, 0.0]], np.float32)   # one right
    lbl = Source("lbl", np.zeros(2), np.array([0, 0]))
    s1, s2 = Source("x1", x1), Source("x2", x2)
    layer, _ = make("type: kSoftmaxLoss", [s1, lbl])
    layer.compute_feature(TRAIN, [s1, lbl])
    l1 = layer.last_loss
    layer.compute_feature(TRAIN, [s2, lbl])
    l2 = layer.last_loss
    assert layer.metrics() == pytest.approx({"loss": (l1 + l2) / 2, "accuracy": 0.75})
    assert layer.display() == "Loss = %f, accuracy = %f" % ((l1 + l2) / 2, 0.75)
    assert layer.display() == layer.display()  # display does not reset
    layer.reset_metrics()
    assert layer.metrics() == {"loss": 0.0, "accuracy": 0.0}
    layer.compute_feature(TRAIN, [s2, lbl])
    assert layer.metrics() == pytest.approx({"loss": l2, "accuracy": 0.5})


def test_softmax_loss_gradient_check():
    rng = np.random.default_rng(0)
    labels = np.array([0, 3, 1, 3])
    check_layer("type: kSoftmaxLoss softmaxloss_conf {topk: 2 scale: 2}",
                [rng.standard_normal((4, 5)), Source("lbl", np.zeros(4), labels)],
                grad_srcs=[0], loss_layer=True)
    # 4-D logits are flattened per instance; the cudnn name is the same layer
    check_layer("type: kCudnnSoftmaxLoss",
                [rng.standard_normal((2, 3, 1, 2)), Source("lbl", np.zeros(2), np.array([5, 0]))],
                grad_srcs=[0], loss_layer=True)


def test_softmax_loss_label_errors():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(UserError, match=r"label 3 of instance 1 .* outside \[0, 3\)"):
        layer, srcs = make("type: kSoftmaxLoss", [x, Source("lbl", np.zeros(2), np.array([0, 3]))])
        layer.compute_feature(TRAIN, srcs)
    with pytest.raises(UserError, match="'lbl' provides no labels"):
        layer, srcs = make("type: kSoftmaxLoss", [x, Source("lbl", np.zeros(2))])
        layer.compute_feature(TRAIN, srcs)
    with pytest.raises(LayerError, match="takes 2 srclayers, got 1"):
        make("type: kSoftmaxLoss", [x])
    with pytest.raises(LayerError, match="topk is 4, expected 1 to 3"):
        make("type: kSoftmaxLoss softmaxloss_conf {topk: 4}", [x, x])


def test_euclidean_loss_values_and_display():
    r = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    t = np.array([[1.0, 0.0], [0.0, 4.0]], np.float32)
    layer, srcs = make("type: kEuclideanLoss", [r, t])
    layer.compute_feature(TRAIN, srcs)
    assert layer.last_loss == pytest.approx((4 + 9) / 2)
    layer.compute_gradient(BACK, srcs)
    np.testing.assert_allclose(srcs[0].grad, 2 * (r - t) / 2)
    assert srcs[1].grad is None  # the target gets no gradient
    layer.compute_feature(TRAIN, [srcs[0], Source("t2", r)])
    assert layer.metrics() == {"loss": pytest.approx(6.5 / 2)}
    assert layer.display() == "Loss = %f" % 3.25


def test_euclidean_loss_gradient_check():
    rng = np.random.default_rng(1)
    check_layer("type: kEuclideanLoss", [rng.standard_normal((3, 4)), rng.standard_normal((3, 2, 2))],
                grad_srcs=[0], loss_layer=True)
    with pytest.raises(LayerError, match="differ in size"):
        make("type: kEuclideanLoss", [np.zeros((3, 4)), np.zeros((3, 5))])
