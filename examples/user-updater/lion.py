"""A user-defined updater, defined outside the platform: Lion ("EvoLved
Sign Momentum", Chen et al. 2023, "Symbolic Discovery of Optimization
Algorithms"). Per step, with g the gradient (plus weight decay, as every
SINGA updater adds it):

    c = beta1 * m + (1 - beta1) * g
    w = w - lr * sign(c)
    m = beta2 * m + (1 - beta2) * g

Every weight moves by exactly lr per step, so lr is ~10x smaller than
SGD's. Lion's two betas come from the `adam_conf { beta1 beta2 }` block of
the job.conf (default 0.9 and 0.999 there; Lion's paper uses 0.9 and 0.99).

`singa submit job.conf --module lion.py` ships this file with the job, so
the servers of every process, on every host, apply Lion.
"""
from __future__ import annotations

import numpy as np

from runtime.model.updater import History, Updater
from runtime.plugins import register_updater


@register_updater("Lion")
class Lion(Updater):
    slots = ("m",)       # one history array per param, zero at first; saved in checkpoints
    clips = True         # clip_low / clip_high apply to the gradient, as for SGD

    def __init__(self, proto):
        super().__init__(proto)
        self.beta1 = proto.adam_conf.beta1
        self.beta2 = proto.adam_conf.beta2
        for name, beta in (("beta1", self.beta1), ("beta2", self.beta2)):
            if not 0.0 <= beta < 1.0:
                # a user error: the CLI prints it without a traceback
                from runtime.errors import UserError
                raise UserError(f"updater Lion: adam_conf.{name} must be in [0, 1), got {beta}")

    def rule(self, w: np.ndarray, g: np.ndarray, lr: float, hist: History) -> None:
        m, c = hist.arrays["m"], self.scratch(g.shape)
        np.multiply(m, self.beta1, out=c)
        c += (1.0 - self.beta1) * g
        np.sign(c, out=c)
        c *= lr
        w -= c
        m *= self.beta2
        m += (1.0 - self.beta2) * g
