"""Param init methods (runtime/model/param_init.py): statistics, exact fan-in scaling, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
from google.protobuf import text_format

from conf import job_pb2
from runtime.errors import UserError
from runtime.model.param import Param
from runtime.model.param_init import generate, init_registry, register_init


def gen(text: str, shape, seed: int = 0) -> np.ndarray:
    proto = text_format.Parse(text, job_pb2.ParamGenProto())
    return generate(proto, shape, np.random.default_rng(seed))


N = (400, 500)  # 200k samples: mean within ~0.01 std


def test_constant():
    out = gen("type: kConstant value: 0.25", (2, 3))
    assert out.dtype == np.float32 and out.shape == (2, 3)
    assert (out == 0.25).all()


def test_constant_default_value_is_one():
    assert (gen("type: kConstant", (4,)) == 1).all()


def test_gaussian_statistics():
    out = gen("type: kGaussian mean: 0.5 std: 2", N)
    assert out.dtype == np.float32 and out.shape == N
    assert out.mean() == pytest.approx(0.5, abs=0.03)
    assert out.std() == pytest.approx(2.0, rel=0.01)


def test_gaussian_value_multiplies():
    out = gen("type: kGaussian mean: 1 std: 0.5 value: 3", N)
    assert out.mean() == pytest.approx(3.0, abs=0.02)
    assert out.std() == pytest.approx(1.5, rel=0.01)


def test_uniform_statistics_and_range():
    out = gen("type: kUniform low: -0.5 high: 1.5", N)
    assert out.min() >= -0.5 and out.max() < 1.5
    assert out.min() < -0.49 and out.max() > 1.49
    assert out.mean() == pytest.approx(0.5, abs=0.01)
    assert out.std() == pytest.approx(2 / math.sqrt(12), rel=0.01)


def test_uniform_default_range_and_value():
    out = gen("type: kUniform value: 2", N)
    assert out.min() >= -2 and out.max() < 2 and out.min() < -1.99
    assert out.mean() == pytest.approx(0.0, abs=0.01)


def test_gaussian_sqrt_fan_in_exact_scaling():
    shape = (30, 16)  # fan_in = shape[1] = 16
    base = gen("type: kGaussian std: 2 value: 3", shape, seed=7)
    out = gen("type: kGaussianSqrtFanIn std: 2 value: 3", shape, seed=7)
    np.testing.assert_allclose(out, base / 4, rtol=1e-6)


def test_uniform_sqrt_fan_in_exact_scaling():
    shape = (10, 12)  # / sqrt(12 / 3) = / 2
    base = gen("type: kUniform low: -1 high: 1", shape, seed=3)
    out = gen("type: kUniformSqrtFanIn low: -1 high: 1", shape, seed=3)
    np.testing.assert_allclose(out, base / 2, rtol=1e-6)


def test_uniform_sqrt_fan_in_out_exact_scaling():
    shape = (9, 16)  # / sqrt(9 + 16) = / 5
    base = gen("type: kUniform value: 2.5", shape, seed=5)
    out = gen("type: kUniformSqrtFanInOut value: 2.5", shape, seed=5)
    np.testing.assert_allclose(out, base / 5, rtol=1e-6)
    # the Glorot range value*[-1, 1]/sqrt(rows+cols) = [-0.5, 0.5)
    big = gen("type: kUniformSqrtFanInOut value: 2.5", (9, 16 * 1000), seed=5)
    assert big.min() >= -2.5 / math.sqrt(16009) and big.max() < 2.5 / math.sqrt(16009)


def test_fan_in_of_non_2d_param_is_prod_of_trailing_dims():
    shape = (4, 2, 2, 2)  # fan_in = 8; rows + cols = 4 + 8
    np.testing.assert_allclose(gen("type: kGaussianSqrtFanIn", shape, seed=1),
                               gen("type: kGaussian", shape, seed=1) / math.sqrt(8), rtol=1e-6)
    np.testing.assert_allclose(gen("type: kUniformSqrtFanInOut", shape, seed=1),
                               gen("type: kUniform", shape, seed=1) / math.sqrt(12), rtol=1e-6)
    # 1-D: fan_in = 1
    np.testing.assert_allclose(gen("type: kUniformSqrtFanIn", (5,), seed=1),
                               gen("type: kUniform", (5,), seed=1) * math.sqrt(3), rtol=1e-6)


def test_same_seed_same_values():
    a = gen("type: kGaussian", (3, 4), seed=11)
    b = gen("type: kGaussian", (3, 4), seed=11)
    np.testing.assert_array_equal(a, b)


def test_param_init_values_uses_generate():
    proto = text_format.Parse("name: 'w' init { type: kConstant value: -2 }", job_pb2.ParamProto())
    p = Param(proto, (2, 2))
    p.init_values(np.random.default_rng(0), version=3)
    assert (p.data == -2).all() and p.version == 3


# --- errors and user methods ---------------------------------------------------------

def test_default_type_needs_registration():
    with pytest.raises(UserError) as e:
        gen("std: 0.1", (2, 2))
    msg = str(e.value)
    for name in ("kUserInit", "user_type", "kConstant", "kGaussian", "kUniform",
                 "kGaussianSqrtFanIn", "kUniformSqrtFanIn", "kUniformSqrtFanInOut"):
        assert name in msg


def test_unregistered_user_type():
    with pytest.raises(UserError, match=r"'Nope'.*built-in types: kConstant, kGaussian"):
        gen("user_type: 'Nope'", (2,))


def test_negative_std():
    with pytest.raises(UserError, match=r"std \}? ?must be >= 0, got -1"):
        gen("type: kGaussian std: -1", (2,))


def test_low_above_high():
    with pytest.raises(UserError, match=r"low: 2.0 high: 1.0"):
        gen("type: kUniform low: 2 high: 1", (2,))


def test_register_user_init():
    @register_init("TestArange")
    def arange(proto, shape, rng):
        return np.arange(math.prod(shape), dtype=np.float64).reshape(shape) * proto.value

    out = gen("user_type: 'TestArange' value: 2", (2, 2))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 2], [4, 6]])


def test_user_init_wrong_shape():
    @register_init("TestWrongShape")
    def wrong(proto, shape, rng):
        return np.zeros(3)

    with pytest.raises(UserError, match=r"'TestWrongShape' returned \(3,\), expected .*\(2, 2\)"):
        gen("user_type: 'TestWrongShape'", (2, 2))


def test_register_init_needs_a_function():
    with pytest.raises(UserError, match="not callable"):
        register_init("TestNotCallable")(42)
    assert "TestNotCallable" not in init_registry
