"""Learning-rate generators against hand-computed values (runtime/model/lr.py)."""
from __future__ import annotations

import math

import pytest
from google.protobuf import text_format

from conf import job_pb2
from runtime.errors import UserError
from runtime.model.lr import LRGen, create_lr, lr_registry, register_lr


def lr(text: str) -> LRGen:
    return create_lr(text_format.Parse(text, job_pb2.LRGenProto()))


def approx(x: float):
    # base_lr etc. are float32 in the proto, hence the relative tolerance
    return pytest.approx(x, rel=1e-6)


def test_fixed():
    gen = lr("type: kFixed base_lr: 0.5")
    assert [gen.get(s) for s in (0, 1, 10 ** 6)] == [0.5, 0.5, 0.5]


def test_default_base_lr():
    assert lr("type: kFixed").get(3) == approx(0.01)


def test_step_uses_integer_division():
    gen = lr("type: kStep base_lr: 0.001 step_conf { gamma: 0.997 change_freq: 60 }")
    assert gen.get(0) == approx(0.001)
    assert gen.get(59) == approx(0.001)
    assert gen.get(60) == approx(0.001 * 0.997)
    assert gen.get(119) == approx(0.000997)
    assert gen.get(120) == approx(0.001 * 0.997 * 0.997)
    # gamma is a float32 (0.99699998), so its 100th power is off by 2e-6 relative
    assert gen.get(6000) == pytest.approx(0.001 * 0.997 ** 100, rel=1e-5)


def test_step_default_gamma_is_one():
    gen = lr("type: kStep base_lr: 0.5 step_conf { change_freq: 2 }")
    assert gen.get(7) == 0.5


def test_fixed_step_boundaries():
    gen = lr("type: kFixedStep base_lr: 7 fixedstep_conf { step: 0 step_lr: 0.5 "
             "step: 100 step_lr: 0.25 step: 300 step_lr: 0.125 }")
    # a pure function of step: any call order gives the same values
    assert [gen.get(s) for s in (10000, 0, 99, 100, 299, 300, 150)] == \
        [0.125, 0.5, 0.5, 0.25, 0.25, 0.125, 0.25]


def test_fixed_step_before_first_boundary_uses_first_rate():
    gen = lr("type: kFixedStep fixedstep_conf { step: 10 step_lr: 0.5 step: 20 step_lr: 0.25 }")
    assert [gen.get(s) for s in (0, 9, 10, 20)] == [0.5, 0.5, 0.5, 0.25]


def test_inverse_t():
    gen = lr("type: kInverseT base_lr: 1 inverset_conf { final_lr: 10 }")
    # 1 / (1 + step/10)
    assert [gen.get(s) for s in (0, 10, 30, 5)] == [1.0, 0.5, 0.25, approx(1 / 1.5)]


def test_inverse():
    gen = lr("type: kInverse base_lr: 2 inverse_conf { gamma: 1 pow: 2 }")
    # 2 * (1 + step)^-2
    assert [gen.get(s) for s in (0, 1, 3)] == [2.0, 0.5, 0.125]
    gen = lr("type: kInverse base_lr: 2 inverse_conf { gamma: 0.5 pow: 1 }")
    assert gen.get(2) == 1.0


def test_inverse_defaults_give_base_lr():
    assert lr("type: kInverse base_lr: 0.5").get(100) == 0.5


def test_exponential_float_division():
    gen = lr("type: kExponential base_lr: 1 exponential_conf { change_freq: 2 }")
    # 1 / 2^(step/2)
    assert gen.get(0) == 1.0
    assert gen.get(1) == approx(1 / math.sqrt(2))
    assert gen.get(2) == 0.5
    assert gen.get(3) == approx(0.5 / math.sqrt(2))
    assert gen.get(4) == 0.25


def test_linear_without_clamping():
    gen = lr("type: kLinear base_lr: 1 linear_conf { change_freq: 4 final_lr: 0.5 }")
    # (1 - s/4) * 1 + (s/4) * 0.5
    assert [gen.get(s) for s in (0, 1, 2, 4, 8)] == [1.0, 0.875, 0.75, 0.5, 0.0]


# --- errors -------------------------------------------------------------------

@pytest.mark.parametrize("text, field", [
    ("type: kStep", r"step_conf\.change_freq"),
    ("type: kStep step_conf { gamma: 0.5 }", r"step_conf\.change_freq"),
    ("type: kExponential", r"exponential_conf\.change_freq"),
    ("type: kLinear linear_conf { change_freq: 10 }", r"linear_conf\.final_lr"),
    ("type: kLinear linear_conf { final_lr: 0.1 }", r"linear_conf\.change_freq"),
    ("type: kInverseT", r"inverset_conf\.final_lr"),
])
def test_missing_conf_field_is_named(text, field):
    with pytest.raises(UserError, match=field):
        lr(text)


def test_change_freq_must_be_positive():
    with pytest.raises(UserError, match=r"step_conf\.change_freq must be > 0, got 0"):
        lr("type: kStep step_conf { change_freq: 0 }")


def test_inverse_t_zero_final_lr():
    with pytest.raises(UserError, match=r"inverset_conf\.final_lr must not be 0"):
        lr("type: kInverseT inverset_conf { final_lr: 0 }")


def test_fixed_step_needs_matching_lists():
    with pytest.raises(UserError, match=r"got 2 step and 1 step_lr"):
        lr("type: kFixedStep fixedstep_conf { step: 0 step: 10 step_lr: 0.1 }")
    with pytest.raises(UserError, match=r"got 0 step and 0 step_lr"):
        lr("type: kFixedStep")


def test_fixed_step_must_increase():
    with pytest.raises(UserError, match=r"strictly increasing, got \[0, 20, 10\]"):
        lr("type: kFixedStep fixedstep_conf { step: 0 step_lr: 1 step: 20 step_lr: 0.5 "
           "step: 10 step_lr: 0.1 }")


def test_default_type_needs_registration():
    with pytest.raises(UserError) as e:
        lr("base_lr: 0.1")
    msg = str(e.value)
    for name in ("kUserChange", "user_type", "kFixed", "kInverseT", "kInverse",
                 "kExponential", "kLinear", "kStep", "kFixedStep"):
        assert name in msg


def test_unregistered_user_type():
    with pytest.raises(UserError, match=r"'Nope'.*built-in types: kFixed, kInverseT"):
        lr("user_type: 'Nope'")


# --- user generators -------------------------------------------------------------

def test_register_user_generator():
    @register_lr("TestHalving")
    class Halving(LRGen):
        def get(self, step):
            return self.base_lr / 2 ** step

    gen = lr("user_type: 'TestHalving' base_lr: 1")
    assert isinstance(gen, Halving)
    assert gen.get(3) == 0.125


def test_register_plain_class_with_get():
    @register_lr("TestConst")
    class Const:
        def __init__(self, proto):
            self.proto = proto

        def get(self, step):
            return 0.25

    assert lr("user_type: 'TestConst'").get(5) == 0.25


@pytest.mark.parametrize("base", [LRGen, object])
def test_register_without_get_names_it(base):
    with pytest.raises(UserError, match=r"lacks the method\(s\) get"):
        @register_lr(f"TestNoGet{base.__name__}")
        class NoGet(base):
            pass
    assert f"TestNoGet{base.__name__}" not in lr_registry


def test_repr_names_the_schedule():
    gen = lr("type: kStep base_lr: 0.001 step_conf { gamma: 0.997 change_freq: 60 }")
    assert repr(gen) == "StepLR(base_lr=0.001, gamma=0.997, change_freq=60)"
