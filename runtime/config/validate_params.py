"""The rules of `runtime.config.validate` about params: their count per
layer type where no layer class checks it, duplicate names, `share_from`,
`init`. A mixin of validate's checker: it reports through the checker's
`layer_problem`, and reads `job`, `layers` and `reported`."""
from __future__ import annotations

from conf import common_pb2, job_pb2
from runtime.config.validate_base import CheckerBase
from runtime.config.validate_training import enum_names
from runtime.model.param_init import init_registry
from runtime.neuralnet import layer_registry
from runtime.neuralnet.net import PHASE_NAMES
from runtime.registry import did_you_mean

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


def phase_layers(net: job_pb2.NetProto, phase: int):
    """(index, layer) of the layers in `phase` by include/exclude, as the
    builder's `filter_phase` (without copying or filling defaults)."""
    for i, lyr in enumerate(net.layer):
        if lyr.include and phase not in lyr.include:
            continue
        if lyr.exclude and phase in lyr.exclude:
            continue
        yield i, lyr


class ParamRules(CheckerBase):
    # -------------------------------------------------------------- params ---
    def params(self, phases: list[int]) -> None:
        layer_reg = layer_registry
        init_reg = init_registry
        init_builtin = enum_names(job_pb2.InitMethod, job_pb2.kUserInit)
        have_ckpt = bool(self.job.checkpoint_path)
        ckpt_names = self._checkpoint_names()

        # param counts for layer types that have no implementation to check them
        for i, lyr in enumerate(self.layers):
            if lyr.user_type or (lyr.type in layer_reg
                               and lyr.type not in PARAM_COUNTS):
                continue
            n = len(lyr.param)
            want = PARAM_COUNTS.get(lyr.type)
            if want is None and lyr.type in PARAMLESS:
                want = (0,)
            if want is not None and n not in want:
                self.layer_problem(i, "param" if n else "",
                                   f"a {job_pb2.LayerType.Name(lyr.type)} layer takes "
                                   f"{' or '.join(map(str, want))} param(s), got {n}")

        # every param of any phase: names, init
        for i, lyr in enumerate(self.layers):
            for k, p in enumerate(lyr.param):
                rel = f"param[{k}]"
                if "@" in p.name or "#" in p.name:
                    self.layer_problem(i, f"{rel}.name", f"param name '{p.name}' may not contain "
                                       "'@' or '#' (reserved for partitions and unrolled copies)")
                if p.share_from:
                    continue
                init = p.init
                if init.user_type:
                    if init.user_type not in init_reg:
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
                if init.type not in init_reg:
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
            for i, lyr in protos:
                for k, p in enumerate(lyr.param):
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
            for i, lyr in protos:
                for k, p in enumerate(lyr.param):
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
                            + (did_you_mean(p.share_from, sorted(names - {p.name}))
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

