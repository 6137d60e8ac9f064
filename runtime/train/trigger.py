"""Trigger: SINGA's `*Now` predicates in one place.

`Trigger(freq, after)(step)` is true when `freq > 0`, `step >= after` and
`(step - after) % freq == 0`, so with `after = 0` a trigger fires at step 0,
before any training (SINGA's "Test @ step 0"). Display, test, validation and
checkpoint all use it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Trigger:
    freq: int
    after: int = 0

    def __call__(self, step: int) -> bool:
        return self.freq > 0 and step >= self.after and (step - self.after) % self.freq == 0
