"""NeuralNet: builds the net of one phase from a NetProto, as SINGA's
`NeuralNet::Create` does.

The pipeline: filter the layers by phase (include/exclude) and fill their
net-level defaults; create a Layer per proto; insert a `split(<name>)` layer
after a layer whose output goes to several consumers when it cannot feed them
directly; sort topologically (an RBM's vis<->hid pair is a legal cycle: a
layer whose source is also its consumer waits only for its first source); set
every layer up in that order (shape inference); resolve `share_from`.

Every problem found is collected and raised at once as a `ConfigError`; a
layer whose setup fails, or whose sources failed, is skipped so that one bad
layer does not hide the problems of the others. A layer type that exists in
the LayerType enum but has no implementation registered is reported as a
warning when only shapes are wanted (`allocate=False`, as `singa validate`
does), so a valid SINGA conf is not rejected for a missing layer here.

Not here (yet): unrolling for BPTT, and partitioning by feature
(`partition_dim: 1`) with its connection layers.
"""
from __future__ import annotations

from typing import Callable

from conf import job_pb2
from runtime.errors import ConfigError, LayerError, Problem, UserError
from runtime.neuralnet.layer import Layer, create_layer, kOneToOne, layer_registry
from runtime.param import Param

PHASE_NAMES = {job_pb2.kTrain: "train", job_pb2.kVal: "validation", job_pb2.kTest: "test"}

Locate = Callable[[int, str], str]


def filter_phase(net: job_pb2.NetProto, phase: int) -> list[tuple[int, job_pb2.LayerProto]]:
    """The layers of `phase` as (index in net.layer, a copy of the proto),
    with `partition_dim` and `unroll_len` filled from the net's defaults."""
    out = []
    for i, proto in enumerate(net.layer):
        if proto.include and phase not in proto.include:
            continue
        if proto.exclude and phase in proto.exclude:
            continue
        p = job_pb2.LayerProto()
        p.CopyFrom(proto)
        if not p.HasField("partition_dim"):
            p.partition_dim = net.partition_dim
        if not p.HasField("unroll_len"):
            p.unroll_len = net.unroll_len
        out.append((i, p))
    return out


def _default_locate(names: dict[int, str]) -> Locate:
    def locate(index: int, field: str) -> str:
        where = f"layer '{names.get(index, index)}'"
        return f"{where} {field}" if field else where
    return locate


class NeuralNet:
    """The layers of one phase in topological order, and their params.

    Contract: after `create`, every layer is set up (`shape` and `params`
    known); with `allocate=True` every param has zeroed `data` and `grad`
    arrays (values shared where `share_from` says so) — initialising values is
    the worker's job (from `init { }` or a checkpoint).
    """

    def __init__(self, phase: int):
        self.phase = phase
        self.layers: list[Layer] = []
        self.params: list[Param] = []
        self.warnings: list[Problem] = []
        self._src: dict[str, list[Layer]] = {}
        self._dst: dict[str, list[Layer]] = {}
        self._index: dict[str, int] = {}  # layer name -> index in NetProto.layer

    # ------------------------------------------------------------ build ---
    @classmethod
    def create(cls, net: job_pb2.NetProto, phase: int, npartitions: int = 1,
               locate: Locate | None = None, allocate: bool = True) -> "NeuralNet":
        self = cls(phase)
        protos = filter_phase(net, phase)
        if npartitions > 1:
            # Batch partitioning of every layer (data parallelism inside a
            # group): each worker's net is partition 0's shape. Partitioning
            # by feature, with its connection layers, comes later.
            for _, p in protos:
                if p.partition_dim != 0:
                    raise UserError(
                        f"layer '{p.name}' has partition_dim {p.partition_dim}: partitioning "
                        "by feature over several workers is not implemented yet")
                p.num_partitions, p.partition_id = npartitions, 0
        locate = locate or _default_locate({i: p.name for i, p in protos})
        pname = PHASE_NAMES.get(phase, str(phase))
        problems: list[Problem] = []

        # 1. create the layers; names are unique within a phase (the validator
        # reports duplicates; here the first one wins)
        by_name: dict[str, Layer] = {}
        order: list[Layer] = []
        failed: set[str] = set()
        for i, proto in protos:
            if proto.name in by_name or proto.name in failed:
                continue
            self._index[proto.name] = i
            try:
                layer = create_layer(proto)
            except UserError as e:
                known_enum = proto.type in job_pb2.LayerType.values() and not proto.user_type
                if known_enum and proto.type != job_pb2.kUserLayer:
                    tname = job_pb2.LayerType.Name(proto.type)
                    problems.append(Problem(
                        locate(i, "type"),
                        f"layer type {tname} is not implemented yet; layers fed by "
                        f"'{proto.name}' are not checked",
                        "warning" if not allocate else "error"))
                elif proto.user_type:
                    problems.append(Problem(locate(i, "user_type"), str(e)))
                else:
                    problems.append(Problem(
                        locate(i, "type"),
                        "type is kUserLayer (the default) but no user_type is set; "
                        "set type to a built-in layer type or user_type to a registered one"))
                failed.add(proto.name)
                continue
            by_name[proto.name] = layer
            order.append(layer)

        # 2. sources: names must exist in this phase's net
        all_names = {p.name for p in net.layer}
        for layer in order:
            i = self._index[layer.name]
            srcs = []
            for k, s in enumerate(layer.proto.srclayers):
                if s in by_name:
                    srcs.append(by_name[s])
                elif s in failed:
                    failed.add(layer.name)
                elif s in all_names:
                    problems.append(Problem(locate(i, f"srclayers[{k}]"),
                                            f"srclayer '{s}' is not in the {pname} net "
                                            "(its include/exclude leaves it out)"))
                    failed.add(layer.name)
                else:
                    problems.append(Problem(locate(i, f"srclayers[{k}]"),
                                            f"unknown srclayer '{s}'; layers of the {pname} net: "
                                            + ", ".join(sorted(by_name))))
                    failed.add(layer.name)
            self._src[layer.name] = srcs
            self._dst.setdefault(layer.name, [])
            for s in srcs:
                self._dst.setdefault(s.name, []).append(layer)

        # 3. split layers where one output feeds several consumers
        for layer in list(order):
            dsts = self._dst.get(layer.name, [])
            if len(dsts) > 1 and layer.dst_layer_connection == kOneToOne:
                split = self._add_split(layer, dsts)
                order.insert(order.index(layer) + 1, split)
                by_name[split.name] = split

        # 4. topological order
        sorted_layers, cyclic = self._toposort(order)
        if cyclic:
            names = [l.name for l in cyclic]
            problems.append(Problem(locate(self._index.get(cyclic[0].name, -1), "srclayers"),
                                    "cycle among layers " + ", ".join(f"'{n}'" for n in names)))
            failed.update(names)

        # 5. set up in order; skip layers fed by failed ones
        for layer in sorted_layers:
            srcs = self._src[layer.name]
            if layer.name in failed or any(s.name in failed for s in srcs):
                failed.add(layer.name)
                continue
            i = self._index.get(layer.name, -1)
            expected = type(layer).num_params
            n = len(layer.proto.param)
            if expected is not None:
                ok = n in expected if isinstance(expected, tuple) else n == expected
                if not ok:
                    want = " or ".join(map(str, expected)) if isinstance(expected, tuple) else str(expected)
                    tname = layer.proto.user_type or job_pb2.LayerType.Name(layer.proto.type)
                    problems.append(Problem(locate(i, "param" if n else ""),
                                            f"a {tname} layer takes {want} param(s), got {n}"))
                    failed.add(layer.name)
                    continue
            try:
                if hasattr(layer, "add_dst"):
                    for d in self._dst[layer.name]:
                        layer.add_dst(d)
                layer.setup(srcs)
            except LayerError as e:
                problems.append(Problem(locate(i, ""), str(e)))
                failed.add(layer.name)
                continue
            self.layers.append(layer)
            self.params.extend(layer.params)

        # 6. share_from
        problems.extend(self._share_params(locate))

        self.warnings = [p for p in problems if p.severity == "warning"]
        if any(p.severity == "error" for p in problems):
            raise ConfigError(problems)
        if allocate:
            for p in self.params:
                if p.owner is None:
                    p.allocate()
            for p in self.params:
                if p.owner is not None:
                    p.share_from(p.owner)
                    p.allocate()
        return self

    def _add_split(self, layer: Layer, dsts: list[Layer]) -> Layer:
        proto = job_pb2.LayerProto(name=f"split({layer.name})", type=job_pb2.kSplit)
        proto.srclayers.append(layer.name)
        proto.split_conf.num_splits = len(dsts)
        proto.partition_dim = layer.proto.partition_dim
        split = create_layer(proto)
        self._src[split.name] = [layer]
        self._dst[split.name] = list(dsts)
        self._dst[layer.name] = [split]
        for d in dsts:
            self._src[d.name] = [split if s is layer else s for s in self._src[d.name]]
        return split

    def _toposort(self, order: list[Layer]) -> tuple[list[Layer], list[Layer]]:
        """Kahn's algorithm in conf order; returns (sorted, layers on a cycle)."""
        deps: dict[str, set[str]] = {}
        for layer in order:
            srcs = self._src.get(layer.name, [])
            dsts = {d.name for d in self._dst.get(layer.name, [])}
            if any(s.name in dsts for s in srcs):
                # an RBM-style bidirectional edge: wait only for the first source
                deps[layer.name] = {srcs[0].name}
            else:
                deps[layer.name] = {s.name for s in srcs}
        done: list[Layer] = []
        placed: set[str] = set()
        pending = list(order)
        progress = True
        while pending and progress:
            progress = False
            for layer in list(pending):
                if deps[layer.name] <= placed:
                    done.append(layer)
                    placed.add(layer.name)
                    pending.remove(layer)
                    progress = True
        return done, pending

    def _share_params(self, locate: Locate) -> list[Problem]:
        problems = []
        by_name: dict[str, Param] = {}
        for p in self.params:
            by_name.setdefault(p.name, p)
        for layer in self.layers:
            i = self._index.get(layer.name, -1)
            for k, p in enumerate(layer.params):
                src = p.proto.share_from
                if not src:
                    continue
                owner = by_name.get(src)
                if owner is None or owner is p:
                    problems.append(Problem(
                        locate(i, f"param[{k}].share_from"),
                        f"param '{p.name}' shares from unknown param '{src}'; params of the "
                        f"{PHASE_NAMES.get(self.phase, self.phase)} net: "
                        + ", ".join(sorted(n for n in by_name if n != p.name))))
                    continue
                if owner.shape != p.shape:
                    problems.append(Problem(
                        locate(i, f"param[{k}].share_from"),
                        f"param '{p.name}' of shape {list(p.shape)} cannot share from "
                        f"'{src}' of shape {list(owner.shape)}"))
                    continue
                # as in SINGA: the sharer takes the owner's config, keeps its name
                proto = job_pb2.ParamProto()
                proto.CopyFrom(owner.proto)
                proto.name, proto.share_from = p.name, src
                p.proto = proto
                p.owner = owner.owner or owner
        return problems

    # ------------------------------------------------------------- query ---
    def srclayers(self, layer: Layer) -> list[Layer]:
        return self._src.get(layer.name, [])

    def dstlayers(self, layer: Layer) -> list[Layer]:
        return self._dst.get(layer.name, [])

    def layer(self, name: str) -> Layer:
        for l in self.layers:
            if l.name == name:
                return l
        raise KeyError(name)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def set_rng(self, rng) -> None:
        for l in self.layers:
            l.rng = rng

    def share_params_from(self, other: "NeuralNet") -> None:
        """Use `other`'s param values (matched by name), as SINGA's test and
        validation nets share the training net's params."""
        theirs = {p.name: p for p in other.params}
        for p in self.params:
            q = theirs.get(p.name)
            if q is not None and q.shape == p.shape:
                p.owner = q.owner or q
                p.data = q.data

    def close(self) -> None:
        for l in self.layers:
            l.close()

    def __repr__(self) -> str:
        return (f"NeuralNet({PHASE_NAMES.get(self.phase, self.phase)}, "
                f"{len(self.layers)} layers, {sum(p.size for p in self.params if p.owner is None)} params)")

