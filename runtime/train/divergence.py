"""Divergence checks: a loss, metric or param value that is not finite ends
the job with `Diverged` (DESIGN: a wrong result is worse than a crash).

Who checks what: every worker its own net's metrics after each training
batch and after each test or validation pass (`check_metrics`), and its
params once more at the end of training (`check_param`); every server of
the distributed runtime each update it applies (`check_update`), so
asynchronous groups and a server in a process of its own fail on their own
evidence. The single-process LocalServer does not check: its one worker's
checks see every update (the next step's loss, or the final params), and a
pass over every param per step would slow the fast path.
"""
from __future__ import annotations

import math

import numpy as np

from runtime.errors import Diverged
from runtime.neuralnet.partition import whole_name

HINT = "lower the learning rate or clip gradients"


def finite(values: np.ndarray) -> bool:
    """Whether every value is finite. A float32 sum is the fast test (NaN and
    inf propagate through it); only a sum that is not finite is checked
    value by value, since finite but huge values can overflow it."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.sum(values)
    return bool(np.isfinite(total)) or bool(np.isfinite(values).all())


def check_metrics(net, step: int, phase: str = "train") -> None:
    """Raise Diverged if a layer of `net` reports a metric that is not finite
    (metrics are sums since the last reset, so one bad batch stays seen)."""
    for layer in net.layers:
        for name, value in layer.metrics().items():
            if not math.isfinite(value):
                what = name.replace("_", " ")
                if phase != "train":
                    what = f"{phase} {what}"
                # the user's layer name: the reason names the worker already
                raise Diverged(f"diverged: {what} is {value} at step {step} "
                               f"(layer '{whole_name(layer.name)}'); {HINT}")


def check_update(name: str, version: int, values: np.ndarray) -> None:
    """Raise Diverged if `values`, param `name` just updated to `version`,
    are not all finite."""
    if not finite(values):
        raise Diverged(f"diverged: update of param '{name}' is not finite at version {version}; "
                       f"{HINT}")


def check_param(name: str, step: int, values: np.ndarray) -> None:
    """Raise Diverged if param `name`'s values after `step` are not all finite."""
    if not finite(values):
        raise Diverged(f"diverged: param '{name}' is not finite after step {step}; {HINT}")
