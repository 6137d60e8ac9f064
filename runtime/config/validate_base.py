"""The state and the helpers that the checker's rule mixins share.

`runtime.config.validate._Checker` is `TrainingRules` + `ParamRules` (and its
own rules); both mixins derive from `CheckerBase`, so what they read from
`self` (the job, the locator, `add`, `where`, ...) is declared once, here.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from conf import job_pb2
from runtime.config.locate import Locator
from runtime.config.paths import PathReport
from runtime.errors import Problem

if TYPE_CHECKING:
    from runtime.neuralnet.net import NeuralNet


class CheckerBase:
    def __init__(self, job: job_pb2.JobProto, locator: Locator | None, path: str,
                 strict: bool, submit: bool, paths: PathReport | None) -> None:
        self.job = job
        self.loc = locator
        self.path = path
        self.strict = strict
        self.submit = submit
        self.paths = paths
        self.later_checkpoints = False  # a missing checkpoint file is a warning (--after)
        self.problems: list[Problem] = []
        self.bad_layers: set[int] = set()       # layers with a problem found here
        self.reported: set[str] = set()         # field paths already reported
        self.where_to_layer: dict[str, int] = {}
        self.layers = list(job.neuralnet.layer)
        # a conf for `singa test` only (SINGA's -test mode, e.g. char-rnn's
        # sample.conf): no train_steps, but test_steps and params to load
        self.test_only = (not submit and not job.HasField("train_steps")
                          and job.test_steps > 0 and bool(job.checkpoint_path))
        self.nets: dict[int, Any] = {}
        self.partitioned_net: NeuralNet | None = None  # the training net, all partitions
        self.cycle_layers: set[str] = set()
        self.net_problem_keys: set[tuple[str, str]] = set()

    # -------------------------------------------------------------- where ---
    def where(self, fpath: str, fallback: str | None = None) -> str:
        if self.loc is not None and self.loc.find(fpath) is not None:
            return self.loc.where(fpath)
        return fallback or self._name_of(fpath)

    def _name_of(self, fpath: str) -> str:
        m = re.match(r"neuralnet\.layer\[(\d+)\](?:\.param\[(\d+)\])?", fpath)
        if m:
            layer = self.layers[int(m.group(1))] if int(m.group(1)) < len(self.layers) else None
            if layer is not None:
                if m.group(2) is not None and int(m.group(2)) < len(layer.param):
                    return f"param '{layer.param[int(m.group(2))].name}' of layer '{layer.name}'"
                return f"layer '{layer.name or '#' + str(int(m.group(1)) + 1)}'"
        return f"{self.path} ({fpath})" if fpath else self.path

    def layer_where(self, i: int, rel: str = "") -> str:
        """Where of a field of layer i (rel: 'srclayers[1]', 'param[0].share_from', '')."""
        fpath = f"neuralnet.layer[{i}]" + (f".{rel}" if rel else "") if i >= 0 else "neuralnet"
        w = self.where(fpath)
        if i >= 0:
            self.where_to_layer.setdefault(w, i)
        return w

    def add(self, where: str, message: str, severity: str = "error") -> None:
        self.problems.append(Problem(where, message, severity))

    def layer_problem(self, i: int, rel: str, message: str, severity: str = "error") -> None:
        name = self.layers[i].name or f"#{i + 1}"
        self.add(self.layer_where(i, rel), f"layer '{name}': {message}", severity)
        if severity == "error":
            self.bad_layers.add(i)

    def first_written(self, base: str, *fields: str) -> str:
        """The first of base.field that is written in the text, else base."""
        for f in fields:
            p = f"{base}.{f}" if base else f
            if self.loc is not None and self.loc.exact(p) is not None:
                return p
        return base
