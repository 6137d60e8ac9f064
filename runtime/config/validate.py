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
  kTest, duplicate names within a phase; each layer's own conf block
  (num_output, num_filters, hdim, local_size odd, store_conf, ...) by its
  class's `check_conf`, from the proto alone (`runtime.neuralnet.conf_check`);
  params per layer type for types not implemented yet;
- params: duplicate names within the training net, unknown `share_from`,
  missing `init` (unless the param shares or is loaded from a checkpoint);
- the net itself (unknown srclayers, cycles, param counts, shapes, share_from
  shapes): `NeuralNet.create(..., allocate=False)` for each phase the job
  uses; its problems are merged, minus those of layers already reported here;
- cluster arithmetic: `runtime.cluster.Cluster.problems()`;
- data files that exist nowhere (`runtime.config.paths`): a warning, an error
  with `strict` or `submit`.

The rules about training (algorithm, updater, learning rate and what the
cluster asks of them) are in `validate_training.py`, those about params in
`validate_params.py`: mixins of the one checker here.

A phase's net is built when the job uses it: kTrain always, kTest when
`test_steps > 0`, kVal when `validate_steps > 0`. A phase that only some
layer names in `include:` is built too, but its problems are warnings (SINGA
never builds it).

Layer types, algorithms and updaters that SINGA has but this build does not
implement yet give warnings (errors with `submit`, which would fail).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conf import job_pb2
from runtime.config.locate import Locator
from runtime.config.paths import PathReport
from runtime.config.validate_params import ParamRules, phase_layers
from runtime.config.validate_training import TrainingRules
from runtime.errors import ConfigError, Problem, UserError
from runtime.neuralnet import layer_registry
from runtime.neuralnet.net import PHASE_NAMES

PHASES = (job_pb2.kTrain, job_pb2.kVal, job_pb2.kTest)
STEPS_FIELD = {job_pb2.kVal: "validate_steps", job_pb2.kTest: "test_steps"}

LOSS_TYPES = (job_pb2.kSoftmaxLoss, job_pb2.kEuclideanLoss, job_pb2.kCudnnSoftmaxLoss)

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
          paths: PathReport | None = None, later_checkpoints: bool = False) -> Validation:
    """Run every rule; see the module docstring. Never raises for a bad conf.
    `later_checkpoints`: a missing checkpoint file is a warning (a job that
    runs before this one is to write it)."""
    checker = _Checker(job, locator, path, strict, submit, paths)
    checker.later_checkpoints = later_checkpoints
    return checker.run()


# ------------------------------------------------------------------ helpers ---

_POS = re.compile(r":(\d+):(\d+)$")


def _sort_key(p: Problem) -> tuple:
    m = _POS.search(p.where)
    return (0, int(m.group(1)), int(m.group(2))) if m else (1, 0, 0)


class _Checker(TrainingRules, ParamRules):
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
        from runtime.config import memory

        def where(name: str) -> str:
            i = next((i for i, lyr in enumerate(self.layers) if lyr.name == name), -1)
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

    # -------------------------------------------------------------- phases ---
    def phases_used(self) -> tuple[list[int], list[int]]:
        """(phases the job runs, phases only named by include:)."""
        used = [job_pb2.kTrain] if self.layers and not self.test_only else []
        unused = []
        for ph in (job_pb2.kVal, job_pb2.kTest):
            if getattr(self.job, STEPS_FIELD[ph]) > 0:
                used.append(ph)
            elif any(ph in lyr.include for lyr in self.layers):
                unused.append(ph)
        return used, unused

    def include_exclude(self) -> None:
        inc = [i for i, lyr in enumerate(self.layers) if lyr.include]
        exc = [i for i, lyr in enumerate(self.layers) if lyr.exclude]
        if inc and exc:
            i, j = exc[0], inc[0]
            self.add(self.layer_where(i, "exclude[0]"),
                     f"layer '{self.layers[i].name}' uses exclude while layer "
                     f"'{self.layers[j].name}' ({self.layer_where(j, 'include[0]')}) uses "
                     "include; SINGA does not allow both in one job.conf: use include "
                     "(exclude is deprecated)")
        for i, lyr in enumerate(self.layers):
            for fname in ("include", "exclude"):
                for k, ph in enumerate(getattr(lyr, fname)):
                    if ph not in PHASES:
                        self.layer_problem(i, f"{fname}[{k}]",
                                           f"{fname}: {job_pb2.Phase.Name(ph)} is not a phase a "
                                           "net is built for; use kTrain, kVal or kTest")

    def duplicate_layers(self, phases: list[int]) -> None:
        dups: dict[tuple[int, int], list[str]] = {}
        for ph in phases:
            first: dict[str, int] = {}
            for i, lyr in phase_layers(self.job.neuralnet, ph):
                if not lyr.name:
                    continue
                if lyr.name in first:
                    dups.setdefault((first[lyr.name], i), []).append(PHASE_NAMES[ph])
                else:
                    first[lyr.name] = i
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
            for i, lyr in phase_layers(self.job.neuralnet, ph):
                by_name.setdefault(lyr.name, (i, lyr))
            for name, (i, lyr) in by_name.items():
                for k, s in enumerate(lyr.srclayers):
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
                    if lyr.user_type or other.user_type or (lyr.type in rbm and other.type in rbm):
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
        # the rules of the type's own conf block are the layer class's
        try:
            cls = layer_registry.lookup(t, "")
        except UserError:
            return  # a type not implemented here: the net builder reports it
        lp = f"neuralnet.layer[{i}]"
        for p in cls.check_conf(layer, submit=self.submit):
            if p.about and f"{lp}.{p.about}" in self.reported:
                continue  # a required field left out, reported as such
            self.layer_problem(i, p.field, p.message, p.severity)

    # ----------------------------------------------------------- the nets ---
    def build(self, phase: int, unused: bool) -> None:
        try:
            from runtime.neuralnet.net import NeuralNet
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
        from runtime.neuralnet.net import NeuralNet
        from runtime.neuralnet.partition import pdim

        prefix = f"with the net partitioned over nworkers_per_group={n} workers: "
        feature = [lyr.name for lyr in net.layers if pdim(lyr.proto) == 1]
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
        if any(getattr(lyr, "is_loss", False) or lyr.proto.type in LOSS_TYPES for lyr in net.layers):
            return
        # layers that were not built (not implemented) may be the loss
        built = {lyr.name for lyr in net.layers}
        for _, lyr in phase_layers(self.job.neuralnet, job_pb2.kTrain):
            if lyr.name not in built:
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
            if issue.layer_index is None and self.later_checkpoints:
                self.add(w, issue.message(what) + "; the job this one runs after is to write it "
                         "(checked again when this job starts)", "warning")
                continue
            prefix = ""
            if issue.layer_index is not None:
                self.where_to_layer.setdefault(w, issue.layer_index)
                prefix = f"layer '{self.layers[issue.layer_index].name}': " \
                         f"{issue.field_path.split('.', 2)[2]}: "
            self.add(w, prefix + issue.message(what) + note, sev)
