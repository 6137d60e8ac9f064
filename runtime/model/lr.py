"""Learning-rate generators: the `learning_rate { }` block of an updater (SINGA's LRGenerator).

`create_lr(proto)` builds the generator a `LRGenProto` names; `gen.get(step)`
is the base learning rate at `step` (the updater multiplies it by the param's
`lr_scale`). Every generator is a pure function of `step`.

| type         | lr(step) (SINGA v0.3 code)                                          |
|--------------|---------------------------------------------------------------------|
| kFixed       | base_lr                                                             |
| kInverseT    | base_lr / (1 + step / final_lr)                                     |
| kInverse     | base_lr * (1 + gamma * step) ^ (-pow)                               |
| kExponential | base_lr / 2 ^ (step / change_freq)          (float division)        |
| kLinear      | (1 - r) * base_lr + r * final_lr, r = step / change_freq (no clamp) |
| kStep        | base_lr * gamma ^ (step // change_freq)     (INTEGER division)      |
| kFixedStep   | step_lr[k], k the last index with step >= step[k] (step_lr[0]       |
|              | before step[0]); base_lr is ignored                                 |
| kUserChange  | a class registered with `@register_lr(name)`, selected by user_type |

kFixedStep differs from SINGA only in how it gets there: SINGA keeps a pointer
that advances at most one index per `Get` call, so a first call at a step past
several boundaries (e.g. after a resume) returns an older rate for a few
calls. For steps that grow by one per call the two agree.

A user generator subclasses `LRGen` (or just has `__init__(proto)` and
`get(step) -> float`):

    @register_lr("Cosine")
    class CosineLR(LRGen):
        def get(self, step): ...
"""
from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import TypeVar

from conf import job_pb2
from runtime.errors import UserError
from runtime.registry import Registry

lr_registry = Registry("learning-rate change method", job_pb2.ChangeMethod, required=("get",))

T = TypeVar("T")


class LRGen:
    """Base of the generators: keeps the proto; subclasses define `get`."""

    def __init__(self, proto: job_pb2.LRGenProto):
        self.proto = proto
        self.base_lr = proto.base_lr

    def get(self, step: int) -> float:
        raise NotImplementedError

    def _fields(self) -> str:
        return f"base_lr={self.base_lr:g}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._fields()})"


def register_lr(name: str) -> Callable[[T], T]:
    """Decorator: register a user LR generator class under `name` (for `user_type`).

    The class must define `get(step)`; a subclass of `LRGen` must override it.
    """
    if not isinstance(name, str) or not name:
        raise UserError(f"register_lr needs a non-empty name string, got {name!r}")

    def add(cls: T) -> T:
        if isinstance(cls, type) and issubclass(cls, LRGen) and cls.get is LRGen.get:
            raise UserError(f"cannot register {cls.__qualname__!r} as learning-rate change "
                            f"method {name!r}: it lacks the method(s) get")
        lr_registry.add(name, cls)
        return cls

    return add


def builtin_names() -> list[str]:
    """The built-in change methods, in enum order (for error messages)."""
    return [job_pb2.ChangeMethod.Name(v) for v in job_pb2.ChangeMethod.values()
            if v in lr_registry]


def create_lr(proto: job_pb2.LRGenProto) -> LRGen:
    """The generator `proto` names; a missing or bad field raises UserError naming it."""
    return lr_registry.create(
        proto, block="learning_rate", noun="learning-rate generator",
        default_type=job_pb2.kUserChange, decorator="register_lr", builtins=builtin_names(),
        example="learning_rate { type: kFixed base_lr: 0.01 }")


def _need(proto: job_pb2.LRGenProto, conf: str, *fields: str) -> None:
    """Raise UserError unless `proto.<conf>.<field>` is set for every field."""
    kind = job_pb2.ChangeMethod.Name(proto.type)
    sub = getattr(proto, conf)
    missing = [f for f in fields if not (proto.HasField(conf) and sub.HasField(f))]
    if missing:
        example = " ".join(f"{f}: ..." for f in fields)
        raise UserError(
            f"learning_rate {{ type: {kind} }} needs {conf} {{ {example} }}; missing "
            + ", ".join(f"{conf}.{f}" for f in missing))


def _positive_freq(proto: job_pb2.LRGenProto, conf: str) -> int:
    freq = getattr(proto, conf).change_freq
    if freq <= 0:
        raise UserError(f"learning_rate: {conf}.change_freq must be > 0, got {freq}")
    return freq


# --- built-in generators -----------------------------------------------------

@lr_registry.register(job_pb2.kFixed)
class FixedLR(LRGen):
    def get(self, step: int) -> float:
        return self.base_lr


@lr_registry.register(job_pb2.kInverseT)
class InverseTLR(LRGen):
    def __init__(self, proto: job_pb2.LRGenProto):
        super().__init__(proto)
        _need(proto, "inverset_conf", "final_lr")
        self.final_lr = proto.inverset_conf.final_lr
        if self.final_lr == 0:
            raise UserError("learning_rate: inverset_conf.final_lr must not be 0 "
                            "(lr = base_lr / (1 + step / final_lr))")

    def get(self, step: int) -> float:
        return self.base_lr / (1.0 + step / self.final_lr)

    def _fields(self) -> str:
        return f"base_lr={self.base_lr:g}, final_lr={self.final_lr:g}"


@lr_registry.register(job_pb2.kInverse)
class InverseLR(LRGen):
    """gamma and pow have defaults (1, 0), so an absent inverse_conf is valid (lr = base_lr)."""

    def __init__(self, proto: job_pb2.LRGenProto):
        super().__init__(proto)
        self.gamma = proto.inverse_conf.gamma
        self.pow = proto.inverse_conf.pow

    def get(self, step: int) -> float:
        return self.base_lr * (1.0 + self.gamma * step) ** (-self.pow)

    def _fields(self) -> str:
        return f"base_lr={self.base_lr:g}, gamma={self.gamma:g}, pow={self.pow:g}"


@lr_registry.register(job_pb2.kExponential)
class ExponentialLR(LRGen):
    def __init__(self, proto: job_pb2.LRGenProto):
        super().__init__(proto)
        _need(proto, "exponential_conf", "change_freq")
        self.change_freq = _positive_freq(proto, "exponential_conf")

    def get(self, step: int) -> float:
        return self.base_lr / 2.0 ** (step / self.change_freq)

    def _fields(self) -> str:
        return f"base_lr={self.base_lr:g}, change_freq={self.change_freq}"


@lr_registry.register(job_pb2.kLinear)
class LinearLR(LRGen):
    def __init__(self, proto: job_pb2.LRGenProto):
        super().__init__(proto)
        _need(proto, "linear_conf", "change_freq", "final_lr")
        self.change_freq = _positive_freq(proto, "linear_conf")
        self.final_lr = proto.linear_conf.final_lr

    def get(self, step: int) -> float:
        r = step / self.change_freq
        return (1.0 - r) * self.base_lr + r * self.final_lr

    def _fields(self) -> str:
        return (f"base_lr={self.base_lr:g}, final_lr={self.final_lr:g}, "
                f"change_freq={self.change_freq}")


@lr_registry.register(job_pb2.kStep)
class StepLR(LRGen):
    """gamma defaults to 1; change_freq has no default and must be given."""

    def __init__(self, proto: job_pb2.LRGenProto):
        super().__init__(proto)
        _need(proto, "step_conf", "change_freq")
        self.change_freq = _positive_freq(proto, "step_conf")
        self.gamma = proto.step_conf.gamma

    def get(self, step: int) -> float:
        # Integer division, as SINGA: the rate changes every change_freq steps.
        return self.base_lr * self.gamma ** (int(step) // self.change_freq)

    def _fields(self) -> str:
        return f"base_lr={self.base_lr:g}, gamma={self.gamma:g}, change_freq={self.change_freq}"


@lr_registry.register(job_pb2.kFixedStep)
class FixedStepLR(LRGen):
    """step_lr[k] for the last k with step >= step[k]; see the module docstring."""

    def __init__(self, proto: job_pb2.LRGenProto):
        super().__init__(proto)
        conf = proto.fixedstep_conf
        self.steps = list(conf.step)
        self.rates = list(conf.step_lr)
        if not self.steps or len(self.steps) != len(self.rates):
            raise UserError(
                "learning_rate { type: kFixedStep } needs fixedstep_conf with one step_lr per "
                f"step (e.g. fixedstep_conf {{ step: 0 step_lr: 0.1 step: 1000 step_lr: 0.01 }}); "
                f"got {len(self.steps)} step and {len(self.rates)} step_lr values")
        if any(a >= b for a, b in zip(self.steps, self.steps[1:])):
            raise UserError(f"learning_rate: fixedstep_conf.step must be strictly increasing, "
                            f"got {self.steps}")

    def get(self, step: int) -> float:
        return self.rates[max(0, bisect.bisect_right(self.steps, step) - 1)]

    def _fields(self) -> str:
        return f"steps={self.steps}, step_lr={self.rates}"
