"""Every check of a parsed job.conf, all problems at once.

`check(job, locator, path, ...)` returns a `Validation`: the list of
`Problem`s (errors and warnings, sorted by position) and the nets built for
shape inference (one partition per phase), which `describe` prints.
`validate(...)` returns only the problems.

What is checked here, and what is delegated:
- required fields (`FindInitializationErrors`), and the confs a layer type,
  updater or learning-rate method needs (e.g. kInnerProduct without
  `innerproduct_conf`, kStep without `step_conf`);
- the top level: layers present, `train_one_batch.alg`, updater and
  learning-rate `type` not left at SINGA's "user" defaults unless a user type
  is registered (the hint lists the built-in choices), `train_steps > 0`,
  `*_freq` / `*_steps` / `*_after` >= 0, test/validation triggers that never
  fire;
- layers: `include` and `exclude` mixed, phases that are not kTrain, kVal,
  kTest, duplicate names within a phase, layer-specific fields (num_output,
  num_filters, hdim, local_size odd, store_conf, ...) checked from the proto
  alone so the message does not depend on a layer implementation, params per
  layer type for types not implemented yet;
- params: duplicate names within the training net, unknown `share_from`,
  missing `init` (unless the param shares or is loaded from a checkpoint);
- the net itself (unknown srclayers, cycles, param counts, shapes, share_from
  shapes): `NeuralNet.create(..., allocate=False)` for each phase the job
  uses; its problems are merged, minus those of layers already reported here;
- cluster arithmetic: `runtime.cluster.Cluster.problems()`;
- data files that exist nowhere (`runtime.config.paths`): a warning, an error
  with `strict` or `submit`.

A phase's net is built when the job uses it: kTrain always, kTest when
`test_steps > 0`, kVal when `validate_steps > 0`. A phase that only some
layer names in `include:` is built too, but its problems are warnings (SINGA
never builds it).

Layer types, algorithms and updaters that SINGA has but this build does not
implement yet give warnings (errors with `submit`, which would fail).
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conf import common_pb2, job_pb2
from runtime.cluster import Cluster
from runtime.config.locate import Locator
from runtime.config.paths import PathReport
from runtime.errors import ConfigError, Problem, UserError

PHASES = (job_pb2.kTrain, job_pb2.kVal, job_pb2.kTest)
PHASE_NAMES = {job_pb2.kTrain: "train", job_pb2.kVal: "validation", job_pb2.kTest: "test"}
STEPS_FIELD = {job_pb2.kVal: "validate_steps", job_pb2.kTest: "test_steps"}

# Backends SINGA v0.3 builds only as compile options; this platform has none of them.
OPTIONAL_BACKENDS = ("lmdb", "hdfsfile", "imagefolder")

# Params per layer type, for the types not implemented here yet (an
# implemented layer declares `num_params` and the net builder checks it).
PARAM_COUNTS: dict[int, tuple[int, ...]] = {
    job_pb2.kInnerProduct: (2,),
    job_pb2.kConvolution: (1, 2), job_pb2.kCConvolution: (1, 2), job_pb2.kCudnnConv: (1, 2),
    job_pb2.kRBMVis: (2,), job_pb2.kRBMHid: (2,),
    job_pb2.kGRU: (6, 9),
    job_pb2.kEmbedding: (1,),
    job_pb2.kBM: (4,), job_pb2.kCudnnBM: (4,),
}
PARAMLESS = (job_pb2.kReLU, job_pb2.kSigmoid, job_pb2.kSTanh, job_pb2.kActivation,
             job_pb2.kDropout, job_pb2.kLRN, job_pb2.kPooling, job_pb2.kCPooling,
             job_pb2.kSoftmax, job_pb2.kSoftmaxLoss, job_pb2.kEuclideanLoss,
             job_pb2.kCudnnPool, job_pb2.kCudnnLRN, job_pb2.kCudnnSoftmax,
             job_pb2.kCudnnActivation, job_pb2.kCudnnSoftmaxLoss, job_pb2.kAccuracy,
             job_pb2.kArgSort, job_pb2.kRNNLabel, job_pb2.kOneHot, job_pb2.kLabel)
LOSS_TYPES = (job_pb2.kSoftmaxLoss, job_pb2.kEuclideanLoss, job_pb2.kCudnnSoftmaxLoss)

# Which updater / LR type reads which sub-conf (others are ignored).
UPDATER_CONFS = {"rmsprop_conf": job_pb2.kRMSProp, "adadelta_conf": job_pb2.kAdaDelta,
                 "adam_conf": job_pb2.kAdam, "adammax_conf": job_pb2.kAdamMax}
LR_CONFS = {"fixedstep_conf": job_pb2.kFixedStep, "step_conf": job_pb2.kStep,
            "linear_conf": job_pb2.kLinear, "exponential_conf": job_pb2.kExponential,
            "inverse_conf": job_pb2.kInverse, "inverset_conf": job_pb2.kInverseT}


@dataclass
class Validation:
    """The outcome of `check`: problems (sorted) and the nets built per phase."""

    problems: list[Problem]
    nets: dict[int, Any] = field(default_factory=dict)      # phase -> NeuralNet (1 partition)
    phases: list[int] = field(default_factory=list)         # phases the job uses, in order
    unused_phases: list[int] = field(default_factory=list)  # built only because of include:
    # the training net over nworkers_per_group partitions, all of them (None: 1 worker)
    partitioned: Any = None
    # estimated memory per process (runtime.config.memory.ProcessMemory), [] if not known
    memory: list = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


def validate(job: job_pb2.JobProto, locator: Locator | None = None, path: str = "<job>",
             *, strict: bool = False, submit: bool = False,
             paths: PathReport | None = None) -> list[Problem]:
    """All problems of `job` (errors and warnings), sorted by position."""
    return check(job, locator, path, strict=strict, submit=submit, paths=paths).problems


def check(job: job_pb2.JobProto, locator: Locator | None = None, path: str = "<job>",
          *, strict: bool = False, submit: bool = False,
          paths: PathReport | None = None) -> Validation:
    """Run every rule; see the module docstring. Never raises for a bad conf."""
    return _Checker(job, locator, path, strict, submit, paths).run()


# ------------------------------------------------------------------ helpers ---

def _registry(module: str, name: str):
    """A registry of another module, or None if that module is not there (yet)."""
    try:
        mod = __import__(module, fromlist=[name])
        return getattr(mod, name)
    except Exception:  # noqa: BLE001 - a missing or broken module means "unknown"
        return None


def _enum_names(enum, skip: int) -> list[str]:
    return [enum.Name(v) for v in enum.values() if v != skip]


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    return ("; did you mean " + " or ".join(f"'{c}'" for c in close) + "?") if close else ""


# the comment by which a conf says its learning rate is scaled for G groups
_LR_SCALED = re.compile(r"#\s*singa:\s*lr scaled for (\d+) groups?", re.I)

_POS = re.compile(r":(\d+):(\d+)$")


def _sort_key(p: Problem) -> tuple:
    m = _POS.search(p.where)
    return (0, int(m.group(1)), int(m.group(2))) if m else (1, 0, 0)


class _Checker:
    def __init__(self, job, locator, path, strict, submit, paths):
        self.job = job
        self.loc = locator
        self.path = path
        self.strict = strict
        self.submit = submit
        self.paths = paths
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
        self.partitioned_net = None
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

    # ---------------------------------------------------------------- run ---
    def run(self) -> Validation:
        self.required_fields()
        self.top_level()
        self.algorithm()
        self.updater()
        self.cluster()
        self.unrolled_algorithm()
        phases, unused = self.phases_used()
        self.include_exclude()
        for i, layer in enumerate(self.layers):
            self.layer_conf(i, layer)
        self.duplicate_layers(phases + unused)
        self.mutual_edges(phases + unused)
        self.params(phases)
        for ph in phases + unused:
            self.build(ph, unused=ph in unused)
        self.data_files(phases)
        memory = self.memory()
        seen = set()
        out = []
        for p in self.problems:
            if (p.where, p.message, p.severity) not in seen:
                seen.add((p.where, p.message, p.severity))
                out.append(p)
        errors = sorted((p for p in out if p.severity == "error"), key=_sort_key)
        warnings = sorted((p for p in out if p.severity != "error"), key=_sort_key)
        return Validation(errors + warnings, self.nets, phases, unused, self.partitioned_net,
                          memory)

    def memory(self) -> list:
        """Each process's estimated memory against its host's (runtime.config.memory)."""
        from runtime.config import memory  # noqa: PLC0415

        def where(name: str) -> str:
            i = next((i for i, l in enumerate(self.layers) if l.name == name), -1)
            return self.layer_where(i) if i >= 0 else self.where("neuralnet", self.path)

        try:
            procs, problems = memory.check(self.job, self.nets, self.partitioned_net, where)
        except Exception as e:  # noqa: BLE001 - a bug in the estimate must not hide the conf's problems
            self.add(self.path, f"the memory of the job's processes is not checked "
                     f"(internal error: {type(e).__name__}: {e})", "warning")
            return []
        self.problems.extend(problems)
        return procs

    # ----------------------------------------------------- required fields ---
    def required_fields(self) -> None:
        for fpath in self.job.FindInitializationErrors():
            self.reported.add(fpath)
            m = re.match(r"neuralnet\.layer\[(\d+)\]\.(.+)$", fpath)
            leaf_msg = self._required_msg(fpath)
            if m:
                i, rel = int(m.group(1)), m.group(2)
                if rel == "name":
                    self.add(self.layer_where(i), f"layer #{i + 1} has no name; every layer needs "
                             "name: \"...\" (srclayers refer to layers by name)")
                    self.bad_layers.add(i)
                else:
                    self.layer_problem(i, rel, f"{rel} is required{leaf_msg}")
            else:
                self.add(self.where(fpath), f"{fpath} is required{leaf_msg}")

    def _required_msg(self, fpath: str) -> str:
        """' (SINGA marks it required although it has a default of X)' where that applies."""
        desc = self.job.DESCRIPTOR
        try:
            for part in re.sub(r"\[\d+\]", "", fpath).split(".")[:-1]:
                desc = desc.fields_by_name[part].message_type
            f = desc.fields_by_name[fpath.rsplit(".", 1)[-1]]
        except (KeyError, AttributeError):
            return ""
        if f.has_default_value:
            return (f" (job.proto marks it required, so it must be written even though "
                    f"its default is {f.default_value})")
        return ""

    # ----------------------------------------------------------- top level ---
    def top_level(self) -> None:
        job = self.job
        if not self.layers:
            self.add(self.where("neuralnet", self.path),
                     "the job has no layers: neuralnet { layer { name: ... type: ... } ... } "
                     "is required")
        if self.test_only:
            self.add(self.path, "train_steps is not set, so this job only tests the params of "
                     "checkpoint_path (singa test); set train_steps to train", "warning")
        elif not job.HasField("train_steps"):
            self.add(self.path, "train_steps is not set; set the number of mini-batches to "
                     "train, e.g. train_steps: 1000")
        elif job.train_steps <= 0:
            self.add(self.where("train_steps"),
                     f"train_steps must be > 0 (mini-batches to train), got {job.train_steps}")
        for f in ("disp_freq", "test_freq", "test_steps", "validate_freq", "validate_steps",
                  "checkpoint_freq", "warmup_steps", "checkpoint_after", "disp_after",
                  "test_after", "validate_after", "step"):
            v = getattr(job, f)
            if v < 0:
                self.add(self.where(f), f"{f} must be >= 0, got {v}")
        for kind, freq, steps in (("test", "test_freq", "test_steps"),
                                  ("validation", "validate_freq", "validate_steps")):
            if getattr(job, freq) > 0 and getattr(job, steps) == 0:
                self.add(self.where(freq),
                         f"{freq} is {getattr(job, freq)} but {steps} is 0, so no {kind} "
                         f"pass runs; set {steps} to the number of {kind} mini-batches",
                         "warning")
        if job.gpu:
            self.add(self.where("gpu"), "gpu: this platform runs every worker on the CPU; "
                     "the GPU ids are ignored", "warning")
        if job.num_openblas_threads < 1:
            self.add(self.where("num_openblas_threads"),
                     f"num_openblas_threads must be >= 1, got {job.num_openblas_threads}")

    # ----------------------------------------------------------- algorithm ---
    def algorithm(self) -> None:
        alg = self.job.train_one_batch
        builtin = _enum_names(job_pb2.AlgType, job_pb2.kUserAlg)
        reg = _registry("runtime.train.worker", "alg_registry")
        if reg is not None:
            _registry("runtime.train.algorithms", "__name__")  # registers the built-ins
        fpath = self.first_written("train_one_batch", "alg", "user_alg")
        if alg.alg == job_pb2.kUserAlg:
            if alg.user_alg:
                if reg is not None and alg.user_alg not in reg:
                    self.add(self.where(fpath),
                             f"train_one_batch {{ user_alg: {alg.user_alg!r} }}: no algorithm is "
                             f"registered under that name; built-in choices: alg: "
                             + ", ".join(builtin))
            else:
                self.add(self.where(fpath, self.path),
                         "train_one_batch { alg } is not set (SINGA's default kUserAlg needs "
                         "user_alg naming a registered algorithm); built-in choices: "
                         + ", ".join(builtin) + " (e.g. train_one_batch { alg: kBP })")
            return
        if reg is not None and alg.alg not in reg:
            self.add(self.where(fpath),
                     f"algorithm {job_pb2.AlgType.Name(alg.alg)} is not implemented yet"
                     + ("" if self.submit else "; the job cannot be submitted until it is"),
                     "error" if self.submit else "warning")
        if alg.alg == job_pb2.kCD and alg.cd_conf.cd_k < 1:
            self.add(self.where("train_one_batch.cd_conf.cd_k"),
                     f"cd_conf.cd_k must be >= 1 (Gibbs steps), got {alg.cd_conf.cd_k}")

    # ------------------------------------------------------------- updater ---
    def updater(self) -> None:
        job = self.job
        if not job.HasField("updater"):
            if not self.test_only:
                self.add(self.path, "updater is not set; e.g. updater { type: kSGD "
                         "learning_rate { type: kFixed base_lr: 0.01 } }; built-in types: "
                         + ", ".join(_enum_names(job_pb2.UpdaterType, job_pb2.kUserUpdater)))
            return
        upd = job.updater
        n_before = len(self.problems)
        builtin = _enum_names(job_pb2.UpdaterType, job_pb2.kUserUpdater)
        reg = _registry("runtime.model.updater", "updater_registry")
        fpath = self.first_written("updater", "type", "user_type")
        tname = job_pb2.UpdaterType.Name(upd.type)
        if upd.user_type:
            if reg is not None and upd.user_type not in reg:
                self.add(self.where(self.first_written("updater", "user_type")),
                         f"updater {{ user_type: {upd.user_type!r} }}: no updater is registered "
                         "under that name; built-in types: " + ", ".join(builtin))
        elif upd.type == job_pb2.kUserUpdater:
            self.add(self.where(fpath),
                     "updater { type } is not set (SINGA's default kUserUpdater needs user_type "
                     "naming a registered updater); built-in types: " + ", ".join(builtin)
                     + " (e.g. updater { type: kSGD ... })")
        elif reg is not None and upd.type not in reg:
            self.add(self.where(fpath), f"updater type {tname} is not implemented yet",
                     "error" if self.submit else "warning")
        if upd.type == job_pb2.kRMSProp and not upd.user_type and not upd.HasField("rmsprop_conf"):
            self.add(self.where(fpath),
                     "updater kRMSProp needs rmsprop_conf { rho: ... } (rho has no default), "
                     "e.g. rmsprop_conf { rho: 0.9 }")
        for conf, owner in UPDATER_CONFS.items():
            if upd.HasField(conf) and upd.type != owner and not upd.user_type:
                self.add(self.where(f"updater.{conf}"),
                         f"updater.{conf} is ignored by updater type {tname} (it is read by "
                         f"{job_pb2.UpdaterType.Name(owner)})", "warning")
        for f in ("momentum", "weight_decay"):
            v = getattr(upd, f)
            if v < 0:
                self.add(self.where(f"updater.{f}"), f"updater.{f} must be >= 0, got {v:g}")
        if upd.momentum >= 1:
            self.add(self.where("updater.momentum"),
                     f"updater.momentum is {upd.momentum:g}; >= 1 makes the updates diverge",
                     "warning")
        if upd.delta <= 0:
            self.add(self.where("updater.delta"), f"updater.delta must be > 0, got {upd.delta:g}")
        if (upd.HasField("clip_low") or upd.HasField("clip_high")) and upd.clip_high <= upd.clip_low:
            self.add(self.where(self.first_written("updater", "clip_high", "clip_low")),
                     f"gradient clipping is off because clip_high ({upd.clip_high:g}) is not "
                     f"greater than clip_low ({upd.clip_low:g})", "warning")
        for conf, names in (("rmsprop_conf", ("rho",)), ("adadelta_conf", ("rho",)),
                            ("adam_conf", ("beta1", "beta2")),
                            ("adammax_conf", ("beta1", "beta2"))):
            if upd.HasField(conf):
                for n in names:
                    v = getattr(getattr(upd, conf), n)
                    if not 0 <= v < 1 and f"updater.{conf}.{n}" not in self.reported:
                        self.add(self.where(f"updater.{conf}.{n}"),
                                 f"updater.{conf}.{n} must be in [0, 1), got {v:g}")
        self.learning_rate(upd)
        if not any(p.severity == "error" for p in self.problems[n_before:]):
            self._fallback("updater", "runtime.model.updater", "create_updater", upd)

    def learning_rate(self, upd: job_pb2.UpdaterProto) -> None:
        builtin = _enum_names(job_pb2.ChangeMethod, job_pb2.kUserChange)
        if not upd.HasField("learning_rate"):
            self.add(self.where("updater"),
                     "updater.learning_rate is not set; e.g. learning_rate { type: kFixed "
                     "base_lr: 0.01 }; built-in types: " + ", ".join(builtin))
            return
        lr = upd.learning_rate
        base = "updater.learning_rate"
        reg = _registry("runtime.model.lr", "lr_registry")
        fpath = self.first_written(base, "type", "user_type")
        tname = job_pb2.ChangeMethod.Name(lr.type)
        n_before = len(self.problems)
        if lr.user_type:
            if reg is not None and lr.user_type not in reg:
                self.add(self.where(self.first_written(base, "user_type")),
                         f"learning_rate {{ user_type: {lr.user_type!r} }}: no learning-rate "
                         "generator is registered under that name; built-in types: "
                         + ", ".join(builtin))
            return
        if lr.type == job_pb2.kUserChange:
            self.add(self.where(fpath),
                     "learning_rate { type } is not set (SINGA's default kUserChange needs "
                     "user_type naming a registered generator); built-in types: "
                     + ", ".join(builtin) + " (e.g. learning_rate { type: kFixed base_lr: 0.01 })")
            return
        if reg is not None and lr.type not in reg:
            self.add(self.where(fpath), f"learning-rate type {tname} is not implemented yet",
                     "error" if self.submit else "warning")
        need = {job_pb2.kStep: ("step_conf", "change_freq: 100 gamma: 0.1"),
                job_pb2.kLinear: ("linear_conf", "change_freq: 1000 final_lr: 0.0001"),
                job_pb2.kExponential: ("exponential_conf", "change_freq: 1000"),
                job_pb2.kInverseT: ("inverset_conf", "final_lr: 1000"),
                job_pb2.kFixedStep: ("fixedstep_conf", "step: 0 step_lr: 0.01 step: 1000 "
                                     "step_lr: 0.001")}
        if lr.type in need:
            conf, example = need[lr.type]
            if not lr.HasField(conf):
                self.add(self.where(fpath), f"learning_rate type {tname} needs "
                         f"{conf} {{ {example} }}")
            else:
                c = getattr(lr, conf)
                if hasattr(c, "change_freq") and c.HasField("change_freq") and c.change_freq <= 0:
                    self.add(self.where(f"{base}.{conf}.change_freq"),
                             f"{conf}.change_freq must be > 0, got {c.change_freq}")
                if lr.type == job_pb2.kInverseT and c.HasField("final_lr") and c.final_lr == 0:
                    self.add(self.where(f"{base}.{conf}.final_lr"),
                             "inverset_conf.final_lr must not be 0 (lr = base_lr / "
                             "(1 + step / final_lr))")
                if lr.type == job_pb2.kFixedStep:
                    steps, rates = list(c.step), list(c.step_lr)
                    if not steps or len(steps) != len(rates):
                        self.add(self.where(f"{base}.{conf}"),
                                 f"fixedstep_conf needs one step_lr per step, got {len(steps)} "
                                 f"step and {len(rates)} step_lr values")
                    elif any(a >= b for a, b in zip(steps, steps[1:])) or steps[0] < 0:
                        self.add(self.where(f"{base}.{conf}.step"),
                                 f"fixedstep_conf.step must be >= 0 and strictly increasing, "
                                 f"got {steps}")
        for conf, owner in LR_CONFS.items():
            if lr.HasField(conf) and lr.type != owner:
                self.add(self.where(f"{base}.{conf}"),
                         f"learning_rate.{conf} is ignored by type {tname} (it is read by "
                         f"{job_pb2.ChangeMethod.Name(owner)})", "warning")
        if lr.type != job_pb2.kFixedStep and lr.base_lr <= 0:
            self.add(self.where(self.first_written(base, "base_lr")),
                     f"learning_rate.base_lr is {lr.base_lr:g}; the params will not learn "
                     "(or will move uphill)", "warning")
        if not any(p.severity == "error" for p in self.problems[n_before:]):
            self._fallback(base, "runtime.model.lr", "create_lr", lr)

    def _fallback(self, fpath: str, module: str, fn: str, proto) -> None:
        """Let the runtime's own constructor check what the rules above do not
        know about (e.g. fields added later); report its message once."""
        if any(p.severity == "error" and p.where == self.where(fpath) for p in self.problems):
            return
        if any(f.startswith(fpath) for f in self.reported):
            return
        make = _registry(module, fn)
        if make is None:
            return
        try:
            make(proto)
        except UserError as e:
            msg = str(e)
            if "not implemented" in msg or "is registered" in msg or "kUser" in msg:
                return  # reported above in this module's words
            self.add(self.where(fpath), msg)
        except Exception:  # noqa: BLE001 - a bug there must not hide the conf's problems
            return

    # ------------------------------------------------------------- cluster ---
    def cluster(self) -> None:
        c = Cluster.from_proto(self.job.cluster)
        for f, msg in c.problems():
            self.add(self.where(self.first_written("cluster", f), self.path + " (cluster)"),
                     f"cluster: {msg}")
        self.async_learning_rate(c)

    def unrolled_algorithm(self) -> None:
        """Unrolled copies share their params and must add their gradients:
        only BPTT does; BP would keep the last copy's gradient alone."""
        net = self.job.neuralnet
        unrolled = net.unroll_len > 1 or any(l.unroll_len > 1 for l in self.layers)
        if unrolled and not self.test_only and self.job.train_one_batch.alg != job_pb2.kBPTT \
                and not self.job.train_one_batch.user_alg:
            alg = job_pb2.AlgType.Name(self.job.train_one_batch.alg)
            self.add(self.where(self.first_written("train_one_batch", "alg"),
                                self.path + " (train_one_batch)"),
                     f"train_one_batch: the net is unrolled (unroll_len > 1) but alg is {alg}; "
                     "only kBPTT adds the gradients of the unrolled copies (the others keep "
                     "one copy's gradient)", "warning")

    def async_learning_rate(self, c: Cluster) -> None:
        """Worker groups update the params asynchronously, each at the full
        rate, so G groups take G times the steps of one (peers.md 3.9: async
        runs that keep the single-worker rate stall or diverge). The conf
        cannot show which rate was the single-worker one, so the user states
        the scaling in a comment that names the group count; the warning
        comes back when the group count changes."""
        groups = c.nworker_groups
        lr = self.job.updater.learning_rate
        if groups < 2 or not self.job.updater.HasField("learning_rate"):
            return
        text = self.loc.text if self.loc is not None else ""
        said = [int(n) for n in _LR_SCALED.findall(text)]
        if groups in said:
            return
        stated = f" (the comment says {said[0]})" if said else ""
        self.add(self.where(self.first_written("updater.learning_rate", "base_lr"),
                            self.path + " (updater)"),
                 f"updater: {groups} worker groups update the params asynchronously, each at "
                 f"base_lr {lr.base_lr:g} as a single worker would; async SGD usually needs the "
                 f"rate divided by the number of groups ({lr.base_lr / groups:g}) or it may stall "
                 f"or diverge. If {lr.base_lr:g} is already scaled, say so in the conf with the "
                 f"comment '# singa: lr scaled for {groups} groups'{stated}", "warning")

    # -------------------------------------------------------------- phases ---
    def phases_used(self) -> tuple[list[int], list[int]]:
        """(phases the job runs, phases only named by include:)."""
        used = [job_pb2.kTrain] if self.layers and not self.test_only else []
        unused = []
        for ph in (job_pb2.kVal, job_pb2.kTest):
            if getattr(self.job, STEPS_FIELD[ph]) > 0:
                used.append(ph)
            elif any(ph in l.include for l in self.layers):
                unused.append(ph)
        return used, unused

    def include_exclude(self) -> None:
        inc = [i for i, l in enumerate(self.layers) if l.include]
        exc = [i for i, l in enumerate(self.layers) if l.exclude]
        if inc and exc:
            i, j = exc[0], inc[0]
            self.add(self.layer_where(i, "exclude[0]"),
                     f"layer '{self.layers[i].name}' uses exclude while layer "
                     f"'{self.layers[j].name}' ({self.layer_where(j, 'include[0]')}) uses "
                     "include; SINGA does not allow both in one job.conf: use include "
                     "(exclude is deprecated)")
        for i, l in enumerate(self.layers):
            for fname in ("include", "exclude"):
                for k, ph in enumerate(getattr(l, fname)):
                    if ph not in PHASES:
                        self.layer_problem(i, f"{fname}[{k}]",
                                           f"{fname}: {job_pb2.Phase.Name(ph)} is not a phase a "
                                           "net is built for; use kTrain, kVal or kTest")

    def duplicate_layers(self, phases: list[int]) -> None:
        dups: dict[tuple[int, int], list[str]] = {}
        for ph in phases:
            first: dict[str, int] = {}
            for i, l in phase_layers(self.job.neuralnet, ph):
                if not l.name:
                    continue
                if l.name in first:
                    dups.setdefault((first[l.name], i), []).append(PHASE_NAMES[ph])
                else:
                    first[l.name] = i
        for (a, b), names in dups.items():
            self.layer_problem(b, "name",
                               f"duplicate layer name in the {' and '.join(names)} net"
                               f"{'s' if len(names) > 1 else ''} (first defined at "
                               f"{self.layer_where(a, 'name')}); names must be unique within "
                               "a phase (use include: to put same-named layers in different "
                               "phases)")

    def mutual_edges(self, phases: list[int]) -> None:
        """Two layers that feed each other form a cycle; only an RBM's
        vis/hid pair (or user layers) may, as SINGA's builder assumes."""
        rbm = (job_pb2.kRBMVis, job_pb2.kRBMHid)
        seen: set[frozenset] = set()
        for ph in phases:
            by_name: dict[str, tuple[int, job_pb2.LayerProto]] = {}
            for i, l in phase_layers(self.job.neuralnet, ph):
                by_name.setdefault(l.name, (i, l))
            for name, (i, l) in by_name.items():
                for k, s in enumerate(l.srclayers):
                    if s == name:
                        self.layer_problem(i, f"srclayers[{k}]",
                                           f"layer '{name}' lists itself as a srclayer (a cycle)")
                        self.cycle_layers.add(name)
                        continue
                    if s not in by_name or name not in by_name[s][1].srclayers:
                        continue
                    pair = frozenset((name, s))
                    if pair in seen:
                        continue
                    seen.add(pair)
                    j, other = by_name[s]
                    if l.user_type or other.user_type or (l.type in rbm and other.type in rbm):
                        continue
                    self.cycle_layers.update((name, s))
                    a, b = sorted((i, j))
                    k2 = list(self.layers[b].srclayers).index(self.layers[a].name)
                    self.layer_problem(b, f"srclayers[{k2}]",
                                       f"layers '{self.layers[a].name}' and "
                                       f"'{self.layers[b].name}' are each other's srclayers "
                                       "(a cycle); only an RBM's kRBMVis/kRBMHid pair may be "
                                       "connected both ways")

    # -------------------------------------------------------------- layers ---
    def layer_conf(self, i: int, layer: job_pb2.LayerProto) -> None:
        """The checks a layer type's conf needs, from the proto alone."""
        if layer.HasField("unroll_len") and layer.unroll_len < 1:
            self.layer_problem(i, "unroll_len", f"unroll_len must be >= 1, got {layer.unroll_len}")
        if layer.HasField("partition_dim") and layer.partition_dim not in (-1, 0, 1):
            self.layer_problem(i, "partition_dim", f"partition_dim must be 0 (batch) or 1 "
                               f"(feature), got {layer.partition_dim}")
        if "@" in layer.name or "#" in layer.name:
            self.layer_problem(i, "name", "layer names may not contain '@' or '#' (the net "
                               "builder uses them for partitions and unrolled copies)")
        if layer.user_type:
            return
        t = layer.type
        if t == job_pb2.kUserLayer:
            self.layer_problem(i, "type", "type is not set (SINGA's default kUserLayer needs user_type "
                               "naming a registered layer); set type, e.g. type: kInnerProduct")
            return
        lp = f"neuralnet.layer[{i}]"
        tname = job_pb2.LayerType.Name(t)

        def conf_missing(conf: str, example: str) -> bool:
            if layer.HasField(conf):
                return False
            self.layer_problem(i, "type", f"a {tname} layer needs {conf} {{ {example} }}")
            return True

        def positive(conf: str, f: str, what: str = "", allow_zero: bool = False) -> None:
            c = getattr(layer, conf)
            if f"{lp}.{conf}.{f}" in self.reported:
                return
            v = getattr(c, f)
            if v < 0 or (v == 0 and not allow_zero):
                self.layer_problem(i, f"{conf}.{f}" if c.HasField(f) else conf,
                                   f"{conf}.{f} must be {'>= 0' if allow_zero else '> 0'}"
                                   f"{what}, got {v}")

        if t == job_pb2.kInnerProduct:
            if not conf_missing("innerproduct_conf", "num_output: N"):
                positive("innerproduct_conf", "num_output")
        elif t in (job_pb2.kConvolution, job_pb2.kCConvolution, job_pb2.kCudnnConv):
            if not conf_missing("convolution_conf", "num_filters: N kernel: K"):
                c = layer.convolution_conf
                if not c.HasField("num_filters"):
                    self.layer_problem(i, "convolution_conf",
                                       "convolution_conf.num_filters is required")
                else:
                    positive("convolution_conf", "num_filters")
                for f in ("kernel", "stride", "kernel_x", "kernel_y", "stride_x", "stride_y"):
                    if c.HasField(f):
                        positive("convolution_conf", f)
                for f in ("pad", "pad_x", "pad_y"):
                    if c.HasField(f):
                        positive("convolution_conf", f, allow_zero=True)
        elif t in (job_pb2.kPooling, job_pb2.kCPooling, job_pb2.kCudnnPool):
            c = layer.pooling_conf
            for f in ("kernel", "stride", "kernel_x", "kernel_y", "stride_x", "stride_y"):
                if c.HasField(f):
                    positive("pooling_conf", f)
            for f in ("pad_x", "pad_y"):
                if c.HasField(f):
                    positive("pooling_conf", f, allow_zero=True)
        elif t in (job_pb2.kLRN, job_pb2.kCudnnLRN):
            ls = layer.lrn_conf.local_size
            if f"{lp}.lrn_conf.local_size" not in self.reported and (ls < 1 or ls % 2 == 0):
                self.layer_problem(i, "lrn_conf.local_size" if layer.lrn_conf.HasField("local_size")
                                   else "lrn_conf",
                                   f"lrn_conf.local_size must be a positive odd number (the "
                                   f"window is centred on each channel), got {ls}")
        elif t in (job_pb2.kRBMVis, job_pb2.kRBMHid):
            if not conf_missing("rbm_conf", "hdim: N"):
                positive("rbm_conf", "hdim")
        elif t == job_pb2.kGRU:
            if not conf_missing("gru_conf", "dim_hidden: N"):
                positive("gru_conf", "dim_hidden")
        elif t == job_pb2.kOneHot:
            if not conf_missing("onehot_conf", "vocab_size: N"):
                positive("onehot_conf", "vocab_size")
        elif t == job_pb2.kEmbedding:
            if not conf_missing("embedding_conf", "vocab_size: N feature_dim: D"):
                positive("embedding_conf", "vocab_size")
                positive("embedding_conf", "feature_dim")
        elif t == job_pb2.kDropout:
            r = layer.dropout_conf.dropout_ratio
            if not 0 <= r < 1:
                self.layer_problem(i, "dropout_conf.dropout_ratio",
                                   f"dropout_conf.dropout_ratio must be in [0, 1), got {r:g}")
        elif t in (job_pb2.kRecordInput, job_pb2.kCSVInput):
            self.store_input(i, layer, tname)
        elif t in (job_pb2.kCSVOutput, job_pb2.kRecordOutput):
            if not conf_missing("store_conf", 'path: "out.csv"'):
                if not layer.store_conf.path:
                    self.layer_problem(i, "store_conf", "store_conf.path is required (the file "
                                       "to write)")
                self.backend(i, layer)
        elif t in (job_pb2.kShardData, job_pb2.kLMDBData):
            conf = "sharddata_conf" if t == job_pb2.kShardData else "lmdbdata_conf"
            if not conf_missing(conf, 'path: "..." batchsize: N'):
                positive(conf, "batchsize")
                positive(conf, "random_skip", allow_zero=True)
        elif t == job_pb2.kMnist:
            if layer.mnist_conf.norm_a == 0 and f"{lp}.mnist_conf.norm_a" not in self.reported:
                self.layer_problem(i, "mnist_conf.norm_a", "mnist_conf.norm_a must not be 0 "
                                   "(pixels are divided by it)")
        elif t == job_pb2.kCharRNN:
            if not conf_missing("char_rnn_conf", 'path: "input.txt" vocab_path: "vocab.txt"'):
                c = layer.char_rnn_conf
                for f in ("path", "vocab_path"):
                    if not getattr(c, f):
                        self.layer_problem(i, "char_rnn_conf", f"char_rnn_conf.{f} is required")
                positive("char_rnn_conf", "batchsize")
                positive("char_rnn_conf", "unroll_len")
        elif t == job_pb2.kCharRNNOutput:
            if not conf_missing("char_rnn_conf", 'vocab_path: "vocab.txt"'):
                if not layer.char_rnn_conf.vocab_path:
                    self.layer_problem(i, "char_rnn_conf", "char_rnn_conf.vocab_path is required")
        elif t in (job_pb2.kArgSort, job_pb2.kAccuracy):
            positive("argsort_conf", "topk")
        elif t in (job_pb2.kSoftmaxLoss, job_pb2.kCudnnSoftmaxLoss):
            positive("softmaxloss_conf", "topk")
        elif t in (job_pb2.kSoftmax, job_pb2.kCudnnSoftmax):
            positive("softmax_conf", "num_softmax_per_instance")
        elif t == job_pb2.kDummy:
            c = layer.dummy_conf
            if c.input and not c.shape:
                self.layer_problem(i, "dummy_conf", "dummy_conf { input: true } needs shape "
                                   "(the shape of the data it generates, batch first)")
            if any(d < 1 for d in c.shape):
                self.layer_problem(i, "dummy_conf.shape", f"dummy_conf.shape dims must be > 0, "
                                   f"got {list(c.shape)}")
        elif t == job_pb2.kRNNDummy:
            c = layer.rnn_dummy_conf
            if not layer.srclayers and not c.shape:
                self.layer_problem(i, "type", "a kRNNDummy layer with no srclayers needs "
                                   "rnn_dummy_conf { shape: ... }")
        elif t in (job_pb2.kImagePreprocess, job_pb2.kRGBImage):
            positive("rgbimage_conf", "cropsize", allow_zero=True)
        elif t == job_pb2.kSlice:
            positive("slice_conf", "num_slices")
        elif t == job_pb2.kConcate:
            positive("concate_conf", "num_concates")
        elif t == job_pb2.kSplit:
            positive("split_conf", "num_splits")

    def store_input(self, i: int, layer: job_pb2.LayerProto, tname: str) -> None:
        if not layer.HasField("store_conf"):
            self.layer_problem(i, "type", f"a {tname} layer needs store_conf {{ backend: "
                               '"kvfile" path: "..." batchsize: N shape: ... }')
            return
        c = layer.store_conf
        if not c.path:
            self.layer_problem(i, "store_conf", "store_conf.path is required (the data file)")
        if not c.batchsize:
            self.layer_problem(i, "store_conf", "store_conf.batchsize is required (instances "
                               "per mini-batch)")
        elif any(b < 1 for b in c.batchsize):
            self.layer_problem(i, "store_conf.batchsize", f"store_conf.batchsize must be > 0, "
                               f"got {list(c.batchsize)}")
        if not c.shape:
            self.layer_problem(i, "store_conf", "store_conf.shape is required (the shape of one "
                               "instance, e.g. shape: 784 or shape: 3 shape: 32 shape: 32)")
        elif any(d < 1 for d in c.shape):
            self.layer_problem(i, "store_conf.shape", f"store_conf.shape dims must be > 0, got "
                               f"{list(c.shape)}")
        if c.HasField("std_value") and c.std_value == 0:
            self.layer_problem(i, "store_conf.std_value", "store_conf.std_value must not be 0 "
                               "(the data is divided by it)")
        if c.random_skip < 0:
            self.layer_problem(i, "store_conf.random_skip",
                               f"store_conf.random_skip must be >= 0, got {c.random_skip}")
        if c.HasField("mean_file") and c.HasField("mean_value"):
            self.layer_problem(i, "store_conf.mean_value", "store_conf has both mean_file and "
                               "mean_value; mean_file is used", "warning")
        self.backend(i, layer)

    def backend(self, i: int, layer: job_pb2.LayerProto) -> None:
        b = layer.store_conf.backend
        if not b:
            return
        reg = _registry("runtime.io.store", "store_registry")
        if reg is not None:
            _registry("runtime.io", "__name__")  # registers the backends
        known = reg.known() if reg is not None else ["kvfile", "textfile"]
        if b in known:
            return
        if b in OPTIONAL_BACKENDS:
            self.layer_problem(i, "store_conf.backend",
                               f"store_conf.backend {b!r} is a compile option of SINGA that this "
                               "platform does not have; supported: " + ", ".join(known),
                               "error" if self.submit else "warning")
        else:
            self.layer_problem(i, "store_conf.backend",
                               f"unknown store_conf.backend {b!r}; supported: "
                               + ", ".join(known) + _did_you_mean(b, known))

    # -------------------------------------------------------------- params ---
    def params(self, phases: list[int]) -> None:
        layer_reg = _registry("runtime.neuralnet", "layer_registry")
        init_reg = _registry("runtime.model.param_init", "init_registry")
        init_builtin = _enum_names(job_pb2.InitMethod, job_pb2.kUserInit)
        have_ckpt = bool(self.job.checkpoint_path)
        ckpt_names = self._checkpoint_names()

        # param counts for layer types that have no implementation to check them
        for i, l in enumerate(self.layers):
            if l.user_type or (layer_reg is not None and l.type in layer_reg
                               and l.type not in PARAM_COUNTS):
                continue
            n = len(l.param)
            want = PARAM_COUNTS.get(l.type)
            if want is None and l.type in PARAMLESS:
                want = (0,)
            if want is not None and n not in want:
                self.layer_problem(i, "param" if n else "",
                                   f"a {job_pb2.LayerType.Name(l.type)} layer takes "
                                   f"{' or '.join(map(str, want))} param(s), got {n}")

        # every param of any phase: names, init
        for i, l in enumerate(self.layers):
            for k, p in enumerate(l.param):
                rel = f"param[{k}]"
                if "@" in p.name or "#" in p.name:
                    self.layer_problem(i, f"{rel}.name", f"param name '{p.name}' may not contain "
                                       "'@' or '#' (reserved for partitions and unrolled copies)")
                if p.share_from:
                    continue
                init = p.init
                if init.user_type:
                    if init_reg is not None and init.user_type not in init_reg:
                        self.layer_problem(i, f"{rel}.init.user_type",
                                           f"param '{p.name}': no init method is registered "
                                           f"under user_type {init.user_type!r}; built-in "
                                           "types: " + ", ".join(init_builtin))
                    continue
                if init.type == job_pb2.kUserInit:
                    # an unrolled net's checkpoint names its params' first copies 0#name
                    if have_ckpt and (ckpt_names is None or p.name in ckpt_names
                                      or f"0#{p.name}" in ckpt_names):
                        continue  # loaded from the checkpoint
                    why = (f" and checkpoint_path has no param named '{p.name}'"
                           if have_ckpt else "")
                    self.layer_problem(i, f"{rel}.init" if p.HasField("init") else rel,
                                       f"param '{p.name}' has no init method (SINGA's default "
                                       f"kUserInit needs a registered user_type){why}; set "
                                       "init { type: ... }, one of " + ", ".join(init_builtin))
                    continue
                if init_reg is not None and init.type not in init_reg:
                    self.layer_problem(i, f"{rel}.init.type", f"init method "
                                       f"{job_pb2.InitMethod.Name(init.type)} is not implemented "
                                       "yet", "error" if self.submit else "warning")
                if init.std < 0:
                    self.layer_problem(i, f"{rel}.init.std", f"param '{p.name}': init.std must "
                                       f"be >= 0, got {init.std:g}")
                if init.type in (job_pb2.kUniform, job_pb2.kUniformSqrtFanIn,
                                 job_pb2.kUniformSqrtFanInOut) and init.low > init.high:
                    self.layer_problem(i, f"{rel}.init.low", f"param '{p.name}': init.low "
                                       f"({init.low:g}) is greater than init.high ({init.high:g})")

        # names: unique in the training net; share_from names a param of the net
        for ph in phases:
            protos = list(phase_layers(self.job.neuralnet, ph))
            first: dict[str, tuple[int, int]] = {}
            for i, l in protos:
                for k, p in enumerate(l.param):
                    if ph != job_pb2.kTrain:
                        first.setdefault(p.name, (i, k))
                        continue
                    if p.name in first:
                        a, b = first[p.name]
                        pw = self.layer_where(a, f"param[{b}].name" if p.name else f"param[{b}]")
                        if p.name:
                            msg = (f"duplicate param name '{p.name}' (first in layer "
                                   f"'{self.layers[a].name}' at {pw}); a param name must be "
                                   "unique in the net: to use the same values, give this param "
                                   f"its own name and share_from: \"{p.name}\"")
                        else:
                            msg = (f"param #{k + 1} has no name, nor has param #{b + 1} of layer "
                                   f"'{self.layers[a].name}' ({pw}); params are identified by "
                                   "name (checkpoints, sharing): name each one")
                        self.layer_problem(i, f"param[{k}].name" if p.name else f"param[{k}]", msg)
                    else:
                        first[p.name] = (i, k)
            names = set(first)
            for i, l in protos:
                for k, p in enumerate(l.param):
                    if not p.share_from:
                        continue
                    if p.share_from == p.name:
                        self.layer_problem(i, f"param[{k}].share_from",
                                           f"param '{p.name}' shares from itself")
                    elif p.share_from not in names:
                        self.layer_problem(
                            i, f"param[{k}].share_from",
                            f"param '{p.name}' shares from unknown param '{p.share_from}' "
                            f"in the {PHASE_NAMES[ph]} net"
                            + (_did_you_mean(p.share_from, names - {p.name})
                               or "; params: " + ", ".join(sorted(n for n in names if n))))

    def _checkpoint_names(self) -> set[str] | None:
        """Param names in the checkpoint files, or None if any cannot be read."""
        names: set[str] = set()
        for p in self.job.checkpoint_path:
            try:
                with open(p, "rb") as f:
                    names.update(common_pb2.BlobProtos.FromString(f.read()).name)
            except Exception:  # noqa: BLE001 - missing or unreadable: reported elsewhere
                return None
        return names

    # ----------------------------------------------------------- the nets ---
    def build(self, phase: int, unused: bool) -> None:
        try:
            from runtime.neuralnet.net import NeuralNet  # noqa: PLC0415
        except Exception as e:  # noqa: BLE001
            self.add(self.path, f"cannot check the net: the net builder failed to load ({e})",
                     "warning")
            return
        pname = PHASE_NAMES[phase]
        if not any(True for _ in phase_layers(self.job.neuralnet, phase)):
            if not unused:
                self.add(self.where(STEPS_FIELD.get(phase, "neuralnet"), self.path),
                         f"no layer is in the {pname} net (every layer's include/exclude leaves "
                         f"it out), but {STEPS_FIELD.get(phase, '')} is "
                         f"{getattr(self.job, STEPS_FIELD.get(phase, 'train_steps'))}")
            return
        locate: Callable[[int, str], str] = self.layer_where
        missing_data = {m.layer_index for m in (self.paths.missing if self.paths else [])
                        if m.layer_index is not None}
        problems: list[Problem] = []
        net = None
        try:
            net = NeuralNet.create(self.job.neuralnet, phase, 1, locate=locate, allocate=False)
            problems = list(getattr(net, "warnings", []))
        except ConfigError as e:
            problems = list(e.problems)
        except UserError as e:
            problems = [Problem(self.where("neuralnet", self.path), str(e))]
        except Exception as e:  # noqa: BLE001 - a builder bug must not hide the conf's problems
            problems = [Problem(self.where("neuralnet", self.path),
                                f"internal error while building the {pname} net "
                                f"({type(e).__name__}: {e}); this is a bug in singa")]
        if net is not None:
            self.nets[phase] = net
        for p in problems:
            i = self.where_to_layer.get(p.where)
            if i is not None and i in self.bad_layers and p.where == self.layer_where(i):
                continue  # a setup error of a layer already reported in this module's words
            if "shares from unknown param" in p.message:
                continue  # checked from the protos in params()
            if p.message.startswith("cycle among layers") and \
                    set(re.findall(r"'([^']*)'", p.message)) <= self.cycle_layers:
                continue  # reported by mutual_edges() in more words
            msg, sev = p.message, p.severity
            if i is not None and i in missing_data and p.where == self.layer_where(i) \
                    and sev == "error":
                # the layer reads its data to learn its shape; the missing file
                # itself is reported by data_files()
                msg = ("its output shape is not known without its data file, so the "
                       "layers fed by it are not checked")
                sev = "warning"
            if i is not None:
                name = self.layers[i].name
                if f"'{name}'" not in msg:
                    msg = f"layer '{name}': {msg}"
            if "not implemented yet" in msg and self.submit:
                sev = "error"
            if unused and sev == "error":
                sev = "warning"
                msg = (f"in the {pname} net, which the job does not use "
                       f"({STEPS_FIELD[phase]} is 0): {msg}")
            # the same problem seen from another phase's net: report it once
            key = (p.where, re.sub(r"the (train|test|validation) net", "the net",
                                   msg).split(";")[0])
            if key in self.net_problem_keys:
                continue
            self.net_problem_keys.add(key)
            self.problems.append(Problem(p.where, msg, sev))
        if phase == job_pb2.kTrain and net is not None:
            self.loss_check(net)
        self.partitioned(phase, net)

    def partitioned(self, phase: int, net) -> None:
        """The training net over nworkers_per_group partitions, built whole
        (when the one-partition net is fine): SINGA's partition rules
        (runtime.neuralnet.partition.check: what may be partitioned by
        feature) and the shapes of every partition and connection layer.
        The net is kept for `singa validate` to show (`Validation.partitioned`)."""
        n = self.job.cluster.nworkers_per_group
        if phase != job_pb2.kTrain or net is None or n <= 1:
            return
        from runtime.neuralnet.net import NeuralNet  # noqa: PLC0415
        from runtime.neuralnet.partition import pdim  # noqa: PLC0415

        prefix = f"with the net partitioned over nworkers_per_group={n} workers: "
        feature = [l.name for l in net.layers if pdim(l.proto) == 1]
        if feature and self.job.train_one_batch.alg == job_pb2.kCD:
            self.add(self.where("train_one_batch.alg", self.path),
                     prefix + "layers " + ", ".join(f"'{x}'" for x in feature[:5])
                     + " are partitioned by feature (partition_dim 1), which kCD does not "
                     "support (its Gibbs steps run the RBM layers only, not the bridges "
                     "between workers); use partition_dim: 0 or one worker per group")
            return
        try:
            built = NeuralNet.create(self.job.neuralnet, phase, n, locate=self.layer_where,
                                     allocate=False)
        except ConfigError as e:
            for p in e.problems:
                self.problems.append(Problem(p.where, prefix + p.message, p.severity))
            return
        except UserError as e:
            self.add(self.where("cluster.nworkers_per_group", self.path),
                     f"the partitioned training net ({n} workers per group) is not checked: {e}",
                     "error" if self.submit else "warning")
            return
        except Exception:  # noqa: BLE001
            return
        for p in built.warnings:
            self.problems.append(Problem(p.where, prefix + p.message, p.severity))
        self.partitioned_net = built

    def loss_check(self, net) -> None:
        if self.job.train_one_batch.alg not in (job_pb2.kBP, job_pb2.kBPTT):
            return
        if any(getattr(l, "is_loss", False) or l.proto.type in LOSS_TYPES for l in net.layers):
            return
        # layers that were not built (not implemented) may be the loss
        built = {l.name for l in net.layers}
        for _, l in phase_layers(self.job.neuralnet, job_pb2.kTrain):
            if l.name not in built:
                return
        self.add(self.where("neuralnet", self.path),
                 "the train net has no loss layer (e.g. kSoftmaxLoss), so BP has no gradient "
                 "to propagate", "warning")

    # ---------------------------------------------------------- data files ---
    def data_files(self, phases: list[int]) -> None:
        if self.paths is None:
            return
        used: set[int] = set()
        for ph in phases:
            used.update(i for i, _ in phase_layers(self.job.neuralnet, ph))
        sev = "error" if (self.strict or self.submit) else "warning"
        note = "" if sev == "error" else (
            "; it may exist only on the job's hosts (singa validate --strict makes this an error)")
        for issue in self.paths.missing:
            if issue.layer_index is not None and issue.layer_index not in used:
                continue
            what = "checkpoint file" if issue.layer_index is None else "data file"
            w = self.where(issue.field_path, self.path)
            prefix = ""
            if issue.layer_index is not None:
                self.where_to_layer.setdefault(w, issue.layer_index)
                prefix = f"layer '{self.layers[issue.layer_index].name}': " \
                         f"{issue.field_path.split('.', 2)[2]}: "
            self.add(w, prefix + issue.message(what) + note, sev)


def phase_layers(net: job_pb2.NetProto, phase: int):
    """(index, layer) of the layers in `phase` by include/exclude, as the
    builder's `filter_phase` (without copying or filling defaults)."""
    for i, l in enumerate(net.layer):
        if l.include and phase not in l.include:
            continue
        if l.exclude and phase in l.exclude:
            continue
        yield i, l

