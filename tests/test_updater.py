"""Updaters against hand-computed values (runtime/model/updater.py).

Numbers are chosen to be exact in float32 (0.5, 0.25, 0.9375, ...) so each
expected value can be worked out on paper; the derivation is in the comments.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from google.protobuf import text_format

from conf import job_pb2
from runtime.errors import UserError
from runtime.model.param import Param
from runtime.model.updater import History, Updater, create_updater, register_updater, updater_registry


def make(text: str) -> Updater:
    return create_updater(text_format.Parse(text, job_pb2.UpdaterProto()))


def arr(*xs: float) -> np.ndarray:
    return np.array(xs, dtype=np.float32)


def run(upd: Updater, w0, grads, key="w", **scales) -> list[np.ndarray]:
    """Apply the grads at steps 0, 1, ...; return w after each step."""
    w = arr(*w0)
    out = []
    for step, g in enumerate(grads):
        grad = arr(*g)
        upd.apply(step, key, w, grad, **scales)
        np.testing.assert_array_equal(grad, arr(*g))  # grad is never modified
        out.append(w.copy())
    return out


def close(got, *expected):
    np.testing.assert_allclose(got, np.array(expected), rtol=1e-6, atol=1e-7)


FIXED = "learning_rate { type: kFixed base_lr: %s }"


# --- SGD ------------------------------------------------------------------------

def test_sgd_momentum():
    upd = make("type: kSGD momentum: 0.5 " + FIXED % 0.5)
    w1, w2, w3 = run(upd, [1, -2], [[0.5, 1], [-1, 0.25], [0, 0]])
    # h = 0.5*0 - 0.5*[0.5, 1] = [-0.25, -0.5]; w = [0.75, -2.5]
    close(w1, 0.75, -2.5)
    # h = 0.5*[-0.25, -0.5] - 0.5*[-1, 0.25] = [0.375, -0.375]; w = [1.125, -2.875]
    close(w2, 1.125, -2.875)
    # h = [0.1875, -0.1875]; w = [1.3125, -3.0625]
    close(w3, 1.3125, -3.0625)
    close(upd.state()["w/history"], 0.1875, -0.1875)


def test_sgd_without_momentum_keeps_no_history():
    upd = make("type: kSGD " + FIXED % 0.25)
    (w1,) = run(upd, [1, 1], [[1, -2]])
    close(w1, 0.75, 1.5)
    assert upd.state() == {}


def test_sgd_weight_decay_lr_scale_wd_scale_grad_scale():
    # lr = 0.25 * lr_scale 2 = 0.5; wd = 0.25 * wd_scale 2 = 0.5; grad_scale 0.5
    upd = make("type: kSGD weight_decay: 0.25 " + FIXED % 0.25)
    w1, w2 = run(upd, [2, -4], [[1, 2], [1, 2]], lr_scale=2.0, wd_scale=2.0, grad_scale=0.5)
    # g = 0.5*[1, 2] + 0.5*[2, -4] = [1.5, -1]; w = [2 - 0.75, -4 + 0.5]
    close(w1, 1.25, -3.5)
    # g = [0.5, 1] + 0.5*[1.25, -3.5] = [1.125, -0.75]; w = [1.25 - 0.5625, -3.5 + 0.375]
    close(w2, 0.6875, -3.125)


def test_wd_scale_zero_disables_weight_decay():
    upd = make("type: kSGD weight_decay: 0.5 " + FIXED % 1)
    (w1,) = run(upd, [2], [[1]], wd_scale=0.0)
    close(w1, 1.0)


def test_weight_decay_enters_momentum():
    upd = make("type: kSGD momentum: 0.5 weight_decay: 0.5 " + FIXED % 0.5)
    w1, w2 = run(upd, [2], [[1], [1]])
    # g = 1 + 0.5*2 = 2; h = -0.5*2 = -1; w = 1
    close(w1, 1.0)
    # g = 1 + 0.5*1 = 1.5; h = 0.5*-1 - 0.5*1.5 = -1.25; w = -0.25
    close(w2, -0.25)


def test_tiny_weight_decay_is_still_applied():
    # wd = 2^-110 takes the path that avoids overflowing grad_scale / wd
    upd = make(f"type: kSGD weight_decay: {2.0 ** -110!r} " + FIXED % repr(2.0 ** 100))
    (w1,) = run(upd, [1], [[0]])
    # g = 2^-110 * 1; w -= 2^100 * g = 2^-10
    close(w1, 1 - 2.0 ** -10)


def test_clipping_before_grad_scale():
    upd = make("type: kSGD clip_low: -0.5 clip_high: 0.5 " + FIXED % 1)
    (w1,) = run(upd, [0, 0, 0], [[2, -3, 0.25]])
    close(w1, -0.5, 0.5, -0.25)
    (w1,) = run(upd, [0], [[2]], grad_scale=0.5)
    # clip(2) = 0.5, then * 0.5
    close(w1, -0.25)


def test_no_clipping_unless_high_above_low():
    upd = make("type: kSGD clip_low: 0.5 clip_high: 0.5 " + FIXED % 1)
    (w1,) = run(upd, [0], [[2]])
    close(w1, -2.0)


# --- Nesterov ---------------------------------------------------------------------

def test_nesterov():
    upd = make("type: kNesterov momentum: 0.5 " + FIXED % 0.5)
    w1, w2 = run(upd, [1, 0], [[1, -2], [2, 0]])
    # h = 0.5*[1, -2] = [0.5, -1]; w -= 1.5*h - 0.5*0 = [0.75, -1.5]
    close(w1, 0.25, 1.5)
    # h = 0.5*[0.5, -1] + 0.5*[2, 0] = [1.25, -0.5]
    # w -= 1.5*[1.25, -0.5] - 0.5*[0.5, -1] = [1.625, -0.25]
    close(w2, -1.375, 1.75)


def test_nesterov_clips():
    upd = make("type: kNesterov momentum: 0.5 clip_low: -1 clip_high: 1 " + FIXED % 0.5)
    (w1,) = run(upd, [1], [[4]])
    # clip to 1: h = 0.5; w -= 0.75
    close(w1, 0.25)


# --- AdaGrad ----------------------------------------------------------------------

def test_adagrad_uses_proto_delta():
    upd = make("type: kAdaGrad delta: 0.75 " + FIXED % 1)
    w1, w2 = run(upd, [1, 2], [[0.5, 0], [0.75, 0.5]])
    # h = [0.25, 0]; w -= [0.5/sqrt(1), 0/sqrt(0.75)]
    close(w1, 0.5, 2.0)
    # h = [0.8125, 0.25]; sqrt(h + 0.75) = [1.25, 1]; w -= [0.6, 0.5]
    close(w2, -0.1, 1.5)


def test_adagrad_clips():
    upd = make("type: kAdaGrad delta: 0.75 clip_low: -0.5 clip_high: 0.5 " + FIXED % 1)
    (w1,) = run(upd, [1], [[3]])
    # clip to 0.5 -> as above
    close(w1, 0.5)


# --- RMSProp ----------------------------------------------------------------------

def test_rmsprop():
    upd = make("type: kRMSProp rmsprop_conf { rho: 0.5 } delta: 0.5 " + FIXED % 0.5)
    w1, w2 = run(upd, [1, -1], [[1, -2], [0.5, 1]])
    # h = 0.5*[1, 4] = [0.5, 2]; w -= 0.5*[1/sqrt(1), -2/sqrt(2.5)]
    close(w1, 0.5, -1 + 1 / math.sqrt(2.5))
    # h = 0.5*[0.5, 2] + 0.5*[0.25, 1] = [0.375, 1.5]
    # w -= 0.5*[0.5/sqrt(0.875), 1/sqrt(2)]
    close(w2, 0.5 - 0.25 / math.sqrt(0.875), -1 + 1 / math.sqrt(2.5) - 0.5 / math.sqrt(2))
    close(w2, 0.2327387580875756, -0.7210978585595978)


def test_rmsprop_clips():
    upd = make("type: kRMSProp rmsprop_conf { rho: 0.5 } delta: 0.5 clip_low: -1 "
               "clip_high: 1 " + FIXED % 0.5)
    (w1,) = run(upd, [1], [[7]])
    close(w1, 0.5)


# --- AdaDelta ---------------------------------------------------------------------

def test_adadelta():
    upd = make("type: kAdaDelta adadelta_conf { rho: 0.5 } delta: 0.25 " + FIXED % 1)
    w1, w2 = run(upd, [1, -1], [[2, -1], [1, 0.5]])
    # elem 0: h = 2; d = 2*sqrt(0.25)/sqrt(2.25) = 2/3; u = 0.5*(4/9) = 2/9; w = 1/3
    # elem 1: h = 0.5; d = -1*0.5/sqrt(0.75); w = -1 + 0.5/sqrt(0.75)
    close(w1, 1 / 3, -1 + 0.5 / math.sqrt(0.75))
    # elem 0: h = 1 + 0.5 = 1.5; d = sqrt(2/9 + 0.25)/sqrt(1.75) = 0.519462...
    # elem 1: h = 0.25 + 0.125 = 0.375; u = 0.5*(1/3) = 1/6;
    #         d = 0.5*sqrt(1/6 + 0.25)/sqrt(0.625)
    close(w2, 1 / 3 - math.sqrt(2 / 9 + 0.25) / math.sqrt(1.75),
          -1 + 0.5 / math.sqrt(0.75) - 0.5 * math.sqrt(1 / 6 + 0.25) / math.sqrt(0.625))
    close(w2, -0.18612914831598637, -0.8308980212742372)


# --- Adam and AdamMax -------------------------------------------------------------

ADAM = "type: kAdam adam_conf { beta1: 0.5 beta2: 0.9375 } delta: 0 " + FIXED % 1


def test_adam_with_bias_correction():
    upd = make(ADAM)
    w1, w2, w3 = run(upd, [1, -1], [[2, -1], [1, 0.5], [0.5, 2]])
    # t=1: m = [1, -0.5], v = 0.0625*[4, 1]; m_hat = [2, -1], v_hat = [4, 1]
    #      w -= [2/2, -1/1]   (without bias correction SINGA would take 1/0.5 = 2)
    close(w1, 0.0, 0.0)
    # t=2: elem 0: m = 1, v = 0.9375*0.25 + 0.0625 = 0.296875;
    #      m_hat = 1/0.75, v_hat = 0.296875/0.12109375; elem 1: m = 0 -> no change
    close(w2, -(1 / 0.75) / math.sqrt(0.296875 / 0.12109375), 0.0)
    close(w2, -0.8515551648780068, 0.0)
    close(w3, -1.5148515023653757, -0.8481833756581001)
    state = upd.state()
    assert state["w/t"].tolist() == [3]
    assert set(state) == {"w/m", "w/v", "w/t"}


def test_adam_delta_inside_sqrt():
    upd = make("type: kAdam adam_conf { beta1: 0.5 beta2: 0.9375 } delta: 5 " + FIXED % 1)
    (w1,) = run(upd, [1], [[2]])
    # m_hat = 2, v_hat = 4; w -= 2 / sqrt(4 + 5)
    close(w1, 1 / 3)


def test_adam_t_counts_per_key():
    upd = make(ADAM)
    run(upd, [1], [[2], [1]], key="a")
    (wb,) = run(upd, [1], [[2]], key="b")
    close(wb, 0.0)  # first update of "b": t = 1
    assert upd.state()["a/t"].tolist() == [2]
    assert upd.state()["b/t"].tolist() == [1]


def test_adammax():
    upd = make("type: kAdamMax adammax_conf { beta1: 0.5 beta2: 0.5 } delta: 0 " + FIXED % 1)
    w1, w2 = run(upd, [0, 0], [[2, -1], [0.5, -4]])
    # t=1: m = [1, -0.5]; u = [2, 1]; w -= (1/0.5) * m/u = [1, -1]
    close(w1, -1.0, 1.0)
    # t=2: m = [0.5 + 0.25, -0.25 - 2] = [0.75, -2.25]; u = max([1, 0.5], [0.5, 4]) = [1, 4]
    #      w -= (1/0.75) * [0.75, -0.5625] = [1, -0.75]
    close(w2, -2.0, 1.75)
    close(upd.state()["w/u"], 1, 4)


def test_adammax_delta_in_denominator_not_stored():
    upd = make("type: kAdamMax adammax_conf { beta1: 0.5 beta2: 0.5 } delta: 2 " + FIXED % 1)
    (w1,) = run(upd, [0], [[2]])
    # m = 1, u = 2 (delta not stored); w -= 2 * 1/(2 + 2)
    close(w1, -0.5)
    close(upd.state()["w/u"], 2.0)


@pytest.mark.parametrize("conf", [
    "type: kAdaDelta adadelta_conf { rho: 0.5 } delta: 0.25",
    "type: kAdam adam_conf { beta1: 0.5 beta2: 0.9375 } delta: 0",
    "type: kAdamMax adammax_conf { beta1: 0.5 beta2: 0.5 } delta: 0",
])
def test_adaptive_updaters_do_not_clip(conf):
    grads = [[2, -3], [5, 0.5]]
    plain = run(make(conf + " " + FIXED % 1), [1, -1], grads)
    clipped = run(make(conf + " clip_low: -0.1 clip_high: 0.1 " + FIXED % 1), [1, -1], grads)
    np.testing.assert_array_equal(plain[-1], clipped[-1])


# --- state and resume ---------------------------------------------------------------

ALL = [
    "type: kSGD momentum: 0.5",
    "type: kNesterov momentum: 0.5",
    "type: kAdaGrad",
    "type: kRMSProp rmsprop_conf { rho: 0.9 }",
    "type: kAdaDelta",
    "type: kAdam",
    "type: kAdamMax",
]


@pytest.mark.parametrize("conf", ALL)
def test_state_and_load_state_continue_identically(conf):
    text = conf + " weight_decay: 0.01 " + FIXED % 0.1
    rng = np.random.default_rng(1)
    grads = rng.standard_normal((5, 2, 3)).astype(np.float32)
    a = make(text)
    wa = rng.standard_normal((2, 3)).astype(np.float32)
    for step in range(3):
        a.apply(step, "w1", wa, grads[step])
    # a checkpoint stores float32 blobs, so round-trip through float32
    saved = {k: v.astype(np.float32) for k, v in a.state().items()}
    assert saved and all(k.startswith("w1/") for k in saved)
    b = make(text)
    b.load_state(saved)
    wb = wa.copy()
    for step in range(3, 5):
        a.apply(step, "w1", wa, grads[step])
        b.apply(step, "w1", wb, grads[step])
    np.testing.assert_array_equal(wa, wb)


def test_state_is_a_copy():
    upd = make("type: kSGD momentum: 0.5 " + FIXED % 1)
    run(upd, [1], [[1]])
    s = upd.state()
    s["w/history"][:] = 100
    close(upd.state()["w/history"], -1.0)


def test_load_state_reshapes_flat_arrays_and_skips_foreign_names(caplog):
    upd = make("type: kSGD momentum: 0.5 " + FIXED % 1)
    upd.load_state({"w/history": np.array([1, 2, 3, 4], np.float32),
                    "w/m": np.zeros(4, np.float32)})
    w = np.zeros((2, 2), np.float32)
    upd.apply(0, "w", w, np.zeros((2, 2), np.float32))
    # h = 0.5*h; w += h
    close(w.ravel(), 0.5, 1, 1.5, 2)
    assert "w/m" in caplog.text


def test_load_state_shape_mismatch_names_key():
    upd = make("type: kSGD momentum: 0.5 " + FIXED % 1)
    upd.load_state({"w/history": np.zeros(3, np.float32)})
    with pytest.raises(UserError, match=r"w/history has shape \(3,\).*\(2,\)"):
        upd.apply(0, "w", np.zeros(2, np.float32), np.zeros(2, np.float32))


def test_keys_are_stringified():
    upd = make("type: kSGD momentum: 0.5 " + FIXED % 1)
    run(upd, [1], [[1]], key=7)
    run(upd, [1], [[1]], key="a/b@0")
    assert set(upd.state()) == {"7/history", "a/b@0/history"}
    upd2 = make("type: kSGD momentum: 0.5 " + FIXED % 1)
    upd2.load_state(upd.state())
    assert set(upd2.state()) == {"7/history", "a/b@0/history"}


def test_works_on_slices_of_a_param():
    upd = make("type: kSGD momentum: 0.5 " + FIXED % 1)
    w = np.ones(6, np.float32)
    upd.apply(0, "w@0", w[:3], np.ones(3, np.float32))
    upd.apply(0, "w@1", w[3:], np.full(3, 2, np.float32))
    close(w, 0, 0, 0, -1, -1, -1)


def test_update_uses_param_scales():
    proto = text_format.Parse("name: 'b' lr_scale: 2 wd_scale: 0", job_pb2.ParamProto())
    p = Param(proto, (2,))
    p.allocate()
    p.data[:] = [1, 1]
    p.grad[:] = [1, -1]
    upd = make("type: kSGD weight_decay: 0.5 " + FIXED % 0.25)
    upd.update(0, p, grad_scale=0.5)
    # lr = 0.5, no decay, g = [0.5, -0.5]
    close(p.data, 0.75, 1.25)
    assert p.version == 0


def test_lr_schedule_is_used_per_step():
    upd = make("type: kSGD learning_rate { type: kStep base_lr: 1 "
               "step_conf { gamma: 0.5 change_freq: 2 } }")
    w = arr(0)
    for step in range(4):
        upd.apply(step, "w", w, arr(1))
    # lr = 1, 1, 0.5, 0.5
    close(w, -3.0)


# --- configuration errors and user updaters -----------------------------------------

def test_default_type_needs_user_registration():
    with pytest.raises(UserError) as e:
        make(FIXED % 0.1)
    msg = str(e.value)
    for name in ("kUserUpdater", "user_type", "kSGD", "kNesterov", "kAdaGrad", "kRMSProp",
                 "kAdaDelta", "kAdam", "kAdamMax"):
        assert name in msg


def test_unregistered_user_type():
    with pytest.raises(UserError, match=r"'NoSuch'.*built-in types: kSGD, kNesterov"):
        make("user_type: 'NoSuch' " + FIXED % 0.1)


def test_rmsprop_needs_rho():
    with pytest.raises(UserError, match=r"rmsprop_conf\.rho"):
        make("type: kRMSProp " + FIXED % 0.1)


def test_missing_learning_rate_is_reported():
    with pytest.raises(UserError, match=r"learning_rate \{ type \} is kUserChange.*kFixed"):
        make("type: kSGD")


def test_bad_beta():
    with pytest.raises(UserError, match=r"adam_conf\.beta1 must be in \[0, 1\), got 1"):
        make("type: kAdam adam_conf { beta1: 1 beta2: 0.9 } " + FIXED % 0.1)


def test_register_user_updater_subclass():
    @register_updater("TestSignSGD")
    class SignSGD(Updater):
        slots = ("count",)

        def rule(self, w, g, lr, hist: History):
            w -= lr * np.sign(g)
            hist.arrays["count"] += 1

    upd = make("user_type: 'TestSignSGD' weight_decay: 0.5 " + FIXED % 0.25)
    assert isinstance(upd, SignSGD)
    (w1,) = run(upd, [1, -1], [[-3, 0.25]])
    # g = [-3, 0.25] + 0.5*[1, -1] = [-2.5, -0.25]; w -= 0.25*sign(g)
    close(w1, 1.25, -0.75)
    close(upd.state()["w/count"], 1, 1)


def test_register_user_updater_without_rule():
    with pytest.raises(UserError, match=r"lacks the method\(s\) rule"):
        @register_updater("TestNoRule")
        class NoRule(Updater):
            pass
    assert "TestNoRule" not in updater_registry


def test_register_user_updater_not_a_subclass_names_missing_methods():
    with pytest.raises(UserError, match=r"lacks the method\(s\) update, state, load_state"):
        @register_updater("TestHalf")
        class Half:
            def __init__(self, proto):
                pass

            def apply(self, *a):
                pass


@pytest.mark.parametrize("momentum,clip", [(0.9, 0.0), (0.0, 0.0), (0.9, 100.0)])
def test_large_arrays_match_the_formula(momentum, clip):
    """Arrays above the block size take the fused BLAS path (or, when
    clipping, the blocked numpy path); results are the formula's."""
    from runtime.model import updater

    n = updater._BLOCK * 3 + 123
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    proto = job_pb2.UpdaterProto(type=job_pb2.kSGD, momentum=momentum, weight_decay=0.01,
                                 clip_low=-clip, clip_high=clip)
    proto.learning_rate.type = job_pb2.kFixed
    proto.learning_rate.base_lr = 0.1
    upd = updater.create_updater(proto)
    w = w0.copy()
    h = np.zeros(n, np.float64)
    ref = w0.astype(np.float64)
    for step in range(2):
        upd.apply(step, "w", w, g, lr_scale=2.0, grad_scale=0.5)
        gg = g * 0.5 + 0.01 * ref
        h = momentum * h - 0.2 * gg
        ref = ref + h
    np.testing.assert_allclose(w, ref, rtol=1e-5, atol=1e-6)
    if momentum:
        assert upd.state()["w/history"].shape == (n,)
