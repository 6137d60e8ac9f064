"""The rules of `runtime.config.validate` about training: the algorithm,
the updater and its learning rate, and what the cluster's shape asks of
them. A mixin of validate's checker: it reports through the checker's
`add`, `where` and `first_written`, and reads `job`, `problems`, `reported`
and `submit`."""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from conf import job_pb2
from runtime.cluster import Cluster
from runtime.config.validate_base import CheckerBase
from runtime.errors import UserError
from runtime.model.lr import create_lr, lr_registry
from runtime.model.updater import create_updater, updater_registry
from runtime.train import algorithms as _algorithms  # noqa: F401 - registers the built-in algorithms
from runtime.train.worker import alg_registry

# Which updater / LR type reads which sub-conf (others are ignored).
UPDATER_CONFS = {"rmsprop_conf": job_pb2.kRMSProp, "adadelta_conf": job_pb2.kAdaDelta,
                 "adam_conf": job_pb2.kAdam, "adammax_conf": job_pb2.kAdamMax}
LR_CONFS = {"fixedstep_conf": job_pb2.kFixedStep, "step_conf": job_pb2.kStep,
            "linear_conf": job_pb2.kLinear, "exponential_conf": job_pb2.kExponential,
            "inverse_conf": job_pb2.kInverse, "inverset_conf": job_pb2.kInverseT}



# the comment by which a conf says its learning rate is scaled for G groups
_LR_SCALED = re.compile(r"#\s*singa:\s*lr scaled for (\d+) groups?", re.I)


def enum_names(enum, skip: int) -> list[str]:
    """The names of `enum`'s values but `skip` (its "user" value)."""
    return [enum.Name(v) for v in enum.values() if v != skip]


class TrainingRules(CheckerBase):
    # ----------------------------------------------------------- algorithm ---
    def algorithm(self) -> None:
        alg = self.job.train_one_batch
        builtin = enum_names(job_pb2.AlgType, job_pb2.kUserAlg)
        reg = alg_registry
        fpath = self.first_written("train_one_batch", "alg", "user_alg")
        if alg.alg == job_pb2.kUserAlg:
            if alg.user_alg:
                if alg.user_alg not in reg:
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
        if alg.alg not in reg:
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
                         + ", ".join(enum_names(job_pb2.UpdaterType, job_pb2.kUserUpdater)))
            return
        upd = job.updater
        n_before = len(self.problems)
        builtin = enum_names(job_pb2.UpdaterType, job_pb2.kUserUpdater)
        reg = updater_registry
        fpath = self.first_written("updater", "type", "user_type")
        tname = job_pb2.UpdaterType.Name(upd.type)
        if upd.user_type:
            if upd.user_type not in reg:
                self.add(self.where(self.first_written("updater", "user_type")),
                         f"updater {{ user_type: {upd.user_type!r} }}: no updater is registered "
                         "under that name; built-in types: " + ", ".join(builtin))
        elif upd.type == job_pb2.kUserUpdater:
            self.add(self.where(fpath),
                     "updater { type } is not set (SINGA's default kUserUpdater needs user_type "
                     "naming a registered updater); built-in types: " + ", ".join(builtin)
                     + " (e.g. updater { type: kSGD ... })")
        elif upd.type not in reg:
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
            self._fallback("updater", create_updater, upd)

    def learning_rate(self, upd: job_pb2.UpdaterProto) -> None:
        builtin = enum_names(job_pb2.ChangeMethod, job_pb2.kUserChange)
        if not upd.HasField("learning_rate"):
            self.add(self.where("updater"),
                     "updater.learning_rate is not set; e.g. learning_rate { type: kFixed "
                     "base_lr: 0.01 }; built-in types: " + ", ".join(builtin))
            return
        lr = upd.learning_rate
        base = "updater.learning_rate"
        reg = lr_registry
        fpath = self.first_written(base, "type", "user_type")
        tname = job_pb2.ChangeMethod.Name(lr.type)
        n_before = len(self.problems)
        if lr.user_type:
            if lr.user_type not in reg:
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
        if lr.type not in reg:
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
                    elif any(a >= b for a, b in zip(steps, steps[1:], strict=False)) or steps[0] < 0:
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
            self._fallback(base, create_lr, lr)

    def _fallback(self, fpath: str, make: Callable[[Any], object], proto) -> None:
        """Let the runtime's own constructor check what the rules above do not
        know about (e.g. fields added later); report its message once."""
        if any(p.severity == "error" and p.where == self.where(fpath) for p in self.problems):
            return
        if any(f.startswith(fpath) for f in self.reported):
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
        unrolled = net.unroll_len > 1 or any(lyr.unroll_len > 1 for lyr in self.layers)
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

