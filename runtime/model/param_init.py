"""Param init methods: the `init { }` block of a param (SINGA's ParamGenerator).

`generate(proto, shape, rng)` returns a new float32 array of `shape` filled
by the method the `ParamGenProto` names. `Param.init_values` calls it.

Methods (SINGA v0.3 code; fan_in = shape[1] of a 2-D param):

| type                   | values                                               |
|------------------------|------------------------------------------------------|
| kConstant              | `value`                                              |
| kGaussian              | N(mean, std), times `value` when value != 1          |
| kUniform               | U[low, high), times `value` when value != 1          |
| kGaussianSqrtFanIn     | kGaussian, then / sqrt(fan_in)                       |
| kUniformSqrtFanIn      | kUniform, then / sqrt(fan_in / 3)                    |
| kUniformSqrtFanInOut   | kUniform, then / sqrt(rows + cols)                   |
| kUserInit (+user_type) | a generator registered with `@register_init(name)`   |

SINGA CHECK-fails (aborts) when a fan-in method is given a param that is not
2-D. Here such a param is treated as the matrix shape[0] x prod(shape[1:])
(so fan_in = prod(shape[1:]), which is 1 for a 1-D param, and rows + cols =
shape[0] + prod(shape[1:])); a convolution kernel (nb_filters, C*kh*kw) is
2-D already, so this only matters for user layers.

A user method is a function `(proto, shape, rng) -> array of shape`:

    @register_init("Orthogonal")
    def orthogonal(proto, shape, rng): ...

selected by `init { user_type: "Orthogonal" }` (user_type wins over type, as
in SINGA). The built-in methods register below, where they are defined.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from conf import job_pb2
from runtime.errors import UserError
from runtime.registry import Registry

InitFn = Callable[[job_pb2.ParamGenProto, tuple, np.random.Generator], np.ndarray]

init_registry = Registry("init method", job_pb2.InitMethod, required=("__call__",))


def register_init(name: str) -> Callable[[InitFn], InitFn]:
    """Decorator: register a user init function under `name` (for `user_type`)."""
    if not isinstance(name, str) or not name:
        raise UserError(f"register_init needs a non-empty name string, got {name!r}")

    def add(fn: InitFn) -> InitFn:
        if not callable(fn):
            raise UserError(f"cannot register {fn!r} as init method {name!r}: it is not "
                            "callable; expected a function (proto, shape, rng) -> array")
        init_registry.add(name, fn)
        return fn

    return add


def builtin_names() -> list[str]:
    """The built-in init methods, in enum order (for error messages)."""
    return [job_pb2.InitMethod.Name(v) for v in job_pb2.InitMethod.values()
            if v in init_registry]


def generate(proto: job_pb2.ParamGenProto, shape: tuple[int, ...],
             rng: np.random.Generator) -> np.ndarray:
    """A new float32 array of `shape` filled as `proto` says (see the module table)."""
    shape = tuple(int(d) for d in shape)
    if proto.user_type:
        if proto.user_type not in init_registry:
            raise UserError(
                f"init {{ user_type: {proto.user_type!r} }}: no init method is registered "
                f"under that name; registered user methods: {_user_names() or 'none'}; "
                f"built-in types: {', '.join(builtin_names())}")
        fn = init_registry.get(proto.user_type)
    elif proto.type == job_pb2.kUserInit:
        raise UserError(
            "init { type } is kUserInit (the default), which needs user_type to name a "
            "method registered with @register_init; set type to one of "
            f"{', '.join(builtin_names())} (e.g. init {{ type: kGaussian std: 0.01 }})")
    else:
        fn = init_registry.get(proto.type)
    out = fn(proto, shape, rng)
    if not isinstance(out, np.ndarray) or out.shape != shape:
        got = out.shape if isinstance(out, np.ndarray) else type(out).__name__
        raise UserError(f"init method {proto.user_type or job_pb2.InitMethod.Name(proto.type)!r} "
                        f"returned {got}, expected an array of shape {shape}")
    return out.astype(np.float32, copy=False)


def _user_names() -> str:
    return ", ".join(k for k in init_registry.known() if k not in builtin_names())


# --- built-in methods --------------------------------------------------------

@init_registry.register(job_pb2.kConstant)
def constant(proto: job_pb2.ParamGenProto, shape: tuple[int, ...],
             rng: np.random.Generator) -> np.ndarray:
    return np.full(shape, proto.value, dtype=np.float32)


@init_registry.register(job_pb2.kGaussian)
def gaussian(proto: job_pb2.ParamGenProto, shape: tuple[int, ...],
             rng: np.random.Generator, factor: float = 1.0) -> np.ndarray:
    """N(mean, std) * value; `factor` is the fan-in scaling of the variants."""
    if proto.std < 0:
        raise UserError(f"init {{ std }} must be >= 0, got {proto.std}")
    # Drawn as float32 and scaled in place: a 12M-element param makes no
    # float64 temporary.
    out = rng.standard_normal(shape, dtype=np.float32)
    out *= proto.std
    out += proto.mean
    scale = (proto.value if proto.value != 1 else 1.0) * factor
    if scale != 1.0:
        out *= scale
    return out


@init_registry.register(job_pb2.kUniform)
def uniform(proto: job_pb2.ParamGenProto, shape: tuple[int, ...],
            rng: np.random.Generator, factor: float = 1.0) -> np.ndarray:
    """U[low, high) * value; `factor` is the fan-in scaling of the variants."""
    if proto.low > proto.high:
        raise UserError(f"init {{ low, high }}: low must be <= high, "
                        f"got low: {proto.low} high: {proto.high}")
    out = rng.random(shape, dtype=np.float32)
    out *= proto.high - proto.low
    out += proto.low
    scale = (proto.value if proto.value != 1 else 1.0) * factor
    if scale != 1.0:
        out *= scale
    return out


def _matrix(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, cols) of a param seen as a matrix; see the module docstring."""
    rows = shape[0] if shape else 1
    return rows, math.prod(shape[1:])


@init_registry.register(job_pb2.kGaussianSqrtFanIn)
def gaussian_sqrt_fan_in(proto: job_pb2.ParamGenProto, shape: tuple[int, ...],
                         rng: np.random.Generator) -> np.ndarray:
    _, fan_in = _matrix(shape)
    return gaussian(proto, shape, rng, 1.0 / math.sqrt(fan_in) if fan_in else 1.0)


@init_registry.register(job_pb2.kUniformSqrtFanIn)
def uniform_sqrt_fan_in(proto: job_pb2.ParamGenProto, shape: tuple[int, ...],
                        rng: np.random.Generator) -> np.ndarray:
    _, fan_in = _matrix(shape)
    return uniform(proto, shape, rng, 1.0 / math.sqrt(fan_in / 3.0) if fan_in else 1.0)


@init_registry.register(job_pb2.kUniformSqrtFanInOut)
def uniform_sqrt_fan_in_out(proto: job_pb2.ParamGenProto, shape: tuple[int, ...],
                            rng: np.random.Generator) -> np.ndarray:
    rows, cols = _matrix(shape)
    return uniform(proto, shape, rng, 1.0 / math.sqrt(rows + cols) if rows + cols else 1.0)
