"""NeuralNet: builds the net of one phase from a NetProto, as SINGA's
`NeuralNet::Create` does.

The pipeline: filter the layers by phase (include/exclude) and fill their
net-level defaults; unroll a recurrent net (below); create a Layer per proto;
insert a `split(<name>)` layer after a layer whose output goes to several
consumers when it cannot feed them directly; sort topologically (an RBM's
vis<->hid pair is a legal cycle: a layer whose source is also its consumer
waits only for its first source); set every layer up in that order (shape
inference); resolve `share_from`.

Every problem found is collected and raised at once as a `ConfigError`; a
layer whose setup fails, or whose sources failed, is skipped so that one bad
layer does not hide the problems of the others. A layer type that exists in
the LayerType enum but has no implementation registered is reported as a
warning when only shapes are wanted (`allocate=False`, as `singa validate`
does), so a valid SINGA conf is not rejected for a missing layer here.

Unrolling (SINGA's `NeuralNet::Unrolling`, for BPTT) is in `unroll.py`, with the
rule of which nets are unrolled.

Partitioning (SINGA's `CreateGraph` over `nworkers_per_group`
partitions; the rules, names and gradient scaling are in `partition.py`):
with `npartitions` n > 1 the one-partition net above (unrolled, split
layers inserted, sorted) becomes n nodes per layer, `name@p`, with the
slice/split, concate and bridge layers SINGA's table asks for, in one
topological order of the whole graph. `partition=None` keeps the whole
graph in this net (bridge pairs connect like any edge: for tests, `singa
validate`, the graph picture); `partition=p` keeps the layers worker p of a
group runs, whose bridges talk to the other workers through a link
(`bridge.attach`). A dim-0 layer's params keep their names (replicas; in
the whole graph partitions p > 0 share partition 0's values); a dim-1
layer's params are `name@p`, row blocks of the conf param, which the nets
holding partition 0 keep whole as well (`wholes`; the partitions' values
are views of it) so that the group's first worker initialises, tests and
checkpoints the conf params under their conf names.

A training net whose layer protos carry `num_partitions` > 1 (the job of a
worker of a group, see `runtime.train.node.partition_job`) is built as partition
`partition_id` of that many; the test and validation nets are never
partitioned (SINGA builds them with 1 partition) and read whole batches.
"""
from __future__ import annotations

from dataclasses import dataclass

from conf import job_pb2
from runtime.errors import ConfigError, LayerError, Problem, UserError
from runtime.model.param import Param
from runtime.neuralnet import partition as partitioning
from runtime.neuralnet.bridge import BridgeDstLayer, BridgeSrcLayer
from runtime.neuralnet.connection_layer import ConcateLayer
from runtime.neuralnet.layer import Layer, allocated, create_layer, kOneToOne
from runtime.neuralnet.unroll import Locate, needs_unrolling, origin_name, unroll_protos

PHASE_NAMES = {job_pb2.kTrain: "train", job_pb2.kVal: "validation", job_pb2.kTest: "test"}


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


@dataclass
class PartOf:
    """Rows `lo:hi` of conf param `name`: partition `index` of `count` (a
    param of a feature-partitioned layer); `whole` is the conf param in the
    nets that hold partition 0."""

    name: str
    index: int
    count: int
    lo: int
    hi: int
    whole: Param | None = None


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
        self.unrolled = False  # whether names are SINGA's unrolled `<i>#<name>`
        self._src: dict[str, list[Layer]] = {}
        self._dst: dict[str, list[Layer]] = {}
        self._index: dict[str, int] = {}  # layer name -> index in NetProto.layer
        self._copies: dict[str, list[Layer]] = {}  # conf layer name -> its unrolled copies
        self._heads: dict[int, Param] = {}  # id(param of a copy i > 0) -> copy 0's param
        self.npartitions = 1
        self.partition: int | None = None  # the partition this net holds (None: all of them)
        self.wholes: dict[str, Param] = {}  # conf name -> the whole conf param of dim-1 parts
        self._parts: dict[int, PartOf] = {}  # id(param of a dim-1 layer) -> where it belongs

    # ------------------------------------------------------------ build ---
    @classmethod
    def create(cls, net: job_pb2.NetProto, phase: int, npartitions: int = 1,
               locate: Locate | None = None, allocate: bool = True,
               unroll: bool | None = None, partition: int | None = None) -> NeuralNet:
        """Build the net of `phase`. `unroll`: unroll it (None: when
        `needs_unrolling` says so). `npartitions` > 1: partition it, keeping
        all partitions (`partition=None`) or only `partition` (see the module
        docstring). Raises ConfigError with every problem."""
        self = cls(phase)
        protos = filter_phase(net, phase)
        marked = [p for _, p in protos if p.num_partitions > 1]
        if phase == job_pb2.kTrain and npartitions <= 1 and marked:
            npartitions, partition = marked[0].num_partitions, marked[0].partition_id
        if npartitions > 1 and partition is not None and not 0 <= partition < npartitions:
            raise UserError(f"partition {partition} of a net of {npartitions} partitions; "
                            f"expected 0 to {npartitions - 1}")
        for _, p in protos:  # the one-partition net; partitions get protos of their own
            p.num_partitions, p.partition_id = 1, 0
        inherited = {p.name for i, p in protos if not net.layer[i].HasField("partition_dim")}
        self.npartitions = max(1, npartitions)
        self.partition = partition if self.npartitions > 1 else None
        locate = locate or _default_locate({i: p.name for i, p in protos})
        pname = PHASE_NAMES.get(phase, str(phase))
        problems: list[Problem] = []
        conf_names = [p.name for _, p in protos]
        self.unrolled = needs_unrolling(protos) if unroll is None else unroll
        if self.unrolled:
            protos, found = unroll_protos(protos, locate)
            problems.extend(found)
        # A problem of an unrolled layer is reported once, by the first copy
        # to have it: the other copies have the same conf and location.
        reported: set[str] = set()  # locations of problems of unrolled copies

        def report(layer_name: str, problem: Problem) -> None:
            if self.unrolled or self.npartitions > 1:
                if problem.where in reported:
                    return
                reported.add(problem.where)
            problems.append(problem)

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
                    report(layer.name, Problem(locate(i, f"srclayers[{k}]"),
                                               f"srclayer '{s}' is not in the {pname} net "
                                               "(its include/exclude leaves it out)"))
                    failed.add(layer.name)
                else:
                    known = conf_names if self.unrolled else by_name
                    report(layer.name, Problem(locate(i, f"srclayers[{k}]"),
                                               f"unknown srclayer '{s}'; layers of the {pname} "
                                               "net: " + ", ".join(sorted(set(known)))))
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
            names = [lyr.name for lyr in cyclic]
            problems.append(Problem(locate(self._index.get(cyclic[0].name, -1), "srclayers"),
                                    "cycle among layers " + ", ".join(f"'{n}'" for n in names)))
            failed.update(names)

        # 4b. partitions: n nodes per layer and the connection layers
        if self.npartitions > 1:
            if self.unrolled:  # a copy inherits the net's partition_dim as its conf layer does
                inherited = {q.name for _, q in protos if origin_name(q.name) in inherited}
            part_found = partitioning.check([lyr for lyr in sorted_layers if lyr.name not in failed],
                                            self._index, locate, self.npartitions, self.unrolled,
                                            inherited)
            for name, problem in part_found:
                report(name, problem)
                if problem.severity == "error":
                    failed.add(name)
            sorted_layers, failed = self._partition(sorted_layers, failed)

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
                    report(layer.name, Problem(locate(i, "param" if n else ""),
                                               f"a {tname} layer takes {want} param(s), got {n}"))
                    failed.add(layer.name)
                    continue
            # the rules of the layer's own conf block, written once in its class
            # (`Layer.check_conf`, which `singa validate` reports too)
            conf_errors = [p for p in type(layer).check_conf(layer.proto) if p.severity == "error"]
            for p in conf_errors:
                report(layer.name, Problem(locate(i, p.field), p.message))
            if conf_errors:
                failed.add(layer.name)
                continue
            try:
                if hasattr(layer, "add_dst"):
                    for d in self._dst[layer.name]:
                        layer.add_dst(d)
                layer.setup(srcs)
            except LayerError as e:
                report(layer.name, Problem(locate(i, ""), str(e)))
                failed.add(layer.name)
                continue
            self.layers.append(layer)
            self.params.extend(layer.params)

        # 6. partitions' params; share_from (unrolled copies share copy 0's params)
        if self.npartitions > 1:
            self._partition_params()
        problems.extend(self._share_params(locate))
        if self.unrolled:
            self._link_copies()

        self.warnings = [p for p in problems if p.severity == "warning"]
        if any(p.severity == "error" for p in problems):
            raise ConfigError(problems)
        if allocate:
            for p in self.params:
                if p.owner is None:
                    p.allocate()
            for p in self.params:
                part = self._parts.get(id(p))
                if part is not None and part.whole is not None:
                    # a view: the rows of the whole (a param of this net, allocated above)
                    p.data = allocated(part.whole.data)[part.lo:part.hi]
                    p.allocate()
                elif p.owner is not None:
                    p.share_from(p.owner)
                    p.allocate()
            # the copies add their gradients into copy 0's (kAggGrad)
            for p in self.params:
                head = self._heads.get(id(p))
                if head is not None:
                    p.grad = head.grad
        return self

    def _partition(self, order: list[Layer], failed: set[str]) -> tuple[list[Layer], set[str]]:
        """Replace the one-partition layers by the partitioned graph's
        (`partition.expand`), all partitions or this net's. Returns the new
        layers in order and the names of those whose one-partition layer
        failed."""
        n = self.npartitions
        nodes = partitioning.expand(order, self._src, n)
        if self.partition is not None:
            nodes = partitioning.local_nodes(nodes, self.partition)
        index: dict[str, int] = {}
        src: dict[str, list[Layer]] = {}
        dst: dict[str, list[Layer]] = {}
        by_name: dict[str, Layer] = {}
        out: list[Layer] = []
        bad: set[str] = set()
        for node in nodes:
            layer = create_layer(node.proto)
            by_name[node.name] = layer
            out.append(layer)
            index[node.name] = self._index.get(node.base, -1)
            if node.base in failed and partitioning.whole_name(node.name) == node.base:
                bad.add(node.name)  # a partition of a failed layer (its connection
                # layers are skipped when their own sources failed)
            if node.bridge >= 0:
                # only kBridgeSrc/kBridgeDst nodes have a bridge; the registry keeps those
                # keys to bridge.py's classes (a key cannot be registered twice)
                assert isinstance(layer, (BridgeSrcLayer, BridgeDstLayer))
                layer.bridge_id = node.bridge
                layer.src_partition, layer.dst_partition = node.src_partition, node.dst_partition
                layer.remote = self.partition is not None
                if node.twin and not node.srcs:
                    assert isinstance(layer, BridgeDstLayer)  # the twin is a bridge_dst's
                    layer.twin = by_name[node.twin]
            if node.grad_scale != 1.0:
                assert isinstance(layer, ConcateLayer)  # expand() scales only its concates
                layer.grad_scale = node.grad_scale
            if node.feature_params:
                layer._feature_params = True  # read by _partition_params
        for node in nodes:  # after: an RBM's vis reads its hid, which comes later
            layer = by_name[node.name]
            src[node.name] = [by_name[s] for s in node.srcs]
            dst.setdefault(node.name, [])
            for s in node.srcs:
                dst.setdefault(s, []).append(layer)
        for node in nodes:
            if node.dsts is not None:  # a slice's piece j goes to partition j
                dst[node.name] = [by_name[d] for d in node.dsts if d in by_name]
        self._index.update(index)
        self._src, self._dst = src, dst
        return out, bad

    def _partition_params(self) -> None:
        """Params of a partitioned net (see the module docstring): in the
        whole graph, the replicas of partitions p > 0 share partition 0's
        values; a dim-1 layer's params are parts of their conf param, which
        the nets holding partition 0 keep whole (inserted before its first
        part in `params`)."""
        n = self.npartitions
        first: dict[str, Layer] = {}
        for layer in self.layers:
            base = partitioning.whole_name(layer.name)
            if getattr(layer, "_feature_params", False):
                for param in layer.params:
                    rows = param.shape[0] if param.shape else 1
                    k = layer.proto.partition_id
                    part = PartOf(partitioning.whole_name(param.name), k, n, k * rows, (k + 1) * rows)
                    self._parts[id(param)] = part
                    if self.partition in (None, 0):
                        whole = self.wholes.get(part.name)
                        if whole is None:
                            proto = job_pb2.ParamProto()
                            proto.CopyFrom(param.proto)
                            proto.name = part.name
                            whole = Param(proto, (rows * n, *param.shape[1:]))
                            self.wholes[part.name] = whole
                        part.whole = whole
                        param.owner = whole
            elif self.partition is None and layer.params and base != layer.name:
                head = first.setdefault(base, layer)
                if head is not layer:
                    for q, h in zip(layer.params, head.params, strict=False):
                        if q.owner is None and not q.proto.share_from:
                            q.owner = h
        if self.wholes:
            params, placed = [], set()
            for p in self.params:
                of = self._parts.get(id(p))
                if of is not None and of.whole is not None and of.name not in placed:
                    placed.add(of.name)
                    params.append(of.whole)
                params.append(p)
            self.params = params

    def part_of(self, param: Param) -> PartOf | None:
        """Where a param of a feature-partitioned layer belongs: its conf
        param, its partition and rows (None for any other param)."""
        return self._parts.get(id(param))

    def group_params(self) -> list[Param]:
        """The params a worker group's parameter service holds for this net,
        in order: every param that owns its values (replicas of dim-0 layers
        once, unrolled copies not) and every part of a dim-1 param; not the
        whole conf params of dim-1 layers, which are made of the parts."""
        wholes = {id(w) for w in self.wholes.values()}
        return [p for p in self.params
                if id(p) not in wholes and (p.owner is None or id(p) in self._parts)]

    def replicas(self, param: Param) -> int:
        """How many copies of `param` the group's workers hold and update:
        1 for a part of a dim-1 param, else the number of partitions."""
        return 1 if id(param) in self._parts else self.npartitions

    def _link_copies(self) -> None:
        """Group the unrolled copies by conf layer; point each param of a
        copy i > 0 at copy 0's param (its gradient goes there)."""
        for layer in self.layers:
            if origin_name(layer.name) != layer.name:  # not a layer the builder added
                self._copies.setdefault(origin_name(layer.name), []).append(layer)
        for copies in self._copies.values():
            copies.sort(key=lambda lyr: lyr.proto.unroll_index)
            first = copies[0]
            if first.proto.unroll_index != 0:
                continue
            for layer in copies[1:]:
                for p, head in zip(layer.params, first.params, strict=False):
                    self._heads[id(p)] = head
                    p.trainable = False  # its gradient is copy 0's: never sent itself

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
        """Resolve `share_from`: each sharer's owner is the param at the end
        of its chain of share_from names, whose config it takes (keeping its
        own name), as SINGA copies the owner's ParamProto."""
        problems = []
        by_name: dict[str, Param] = {}
        for p in self.params:
            by_name.setdefault(p.name, p)
        shown = (lambda n: origin_name(n)) if self.unrolled else (lambda n: n)
        direct: dict[int, Param] = {}
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
                        f"param '{shown(p.name)}' shares from unknown param '{shown(src)}'; "
                        f"params of the {PHASE_NAMES.get(self.phase, self.phase)} net: "
                        + ", ".join(sorted({shown(n) for n in by_name if n != p.name}))))
                    continue
                if owner.shape != p.shape:
                    problems.append(Problem(
                        locate(i, f"param[{k}].share_from"),
                        f"param '{shown(p.name)}' of shape {list(p.shape)} cannot share from "
                        f"'{shown(src)}' of shape {list(owner.shape)}"))
                    continue
                direct[id(p)] = owner
        for p in self.params:
            owner = direct.get(id(p))
            if owner is None:
                continue
            seen = {id(p)}
            while id(owner) in direct and id(owner) not in seen:
                seen.add(id(owner))
                owner = direct[id(owner)]
            if id(owner) in seen:
                problems.append(Problem(f"param '{shown(p.name)}'",
                                        "share_from names form a cycle; one param of the "
                                        "chain must own the values"))
                continue
            # as in SINGA: the sharer takes the owner's config, keeps its name
            proto = job_pb2.ParamProto()
            proto.CopyFrom(owner.proto)
            proto.name, proto.share_from = p.name, p.proto.share_from
            p.proto = proto
            p.owner = owner
        return problems

    # ------------------------------------------------------------- query ---
    def srclayers(self, layer: Layer) -> list[Layer]:
        return self._src.get(layer.name, [])

    def dstlayers(self, layer: Layer) -> list[Layer]:
        return self._dst.get(layer.name, [])

    def copies(self, name: str) -> list[Layer]:
        """The unrolled copies of conf layer `name` by unroll_index ([] if the
        net is not unrolled or has no such layer)."""
        return self._copies.get(name, [])

    def origin(self, layer: Layer | str) -> str:
        """The conf name of a layer (itself for a net that is not unrolled and
        for the layers the builder adds, e.g. `split(0#x)` stays as it is)."""
        name = layer if isinstance(layer, str) else layer.name
        return origin_name(name) if self.unrolled else name

    def copy_of(self, name: str, index: int) -> Layer | None:
        """Copy `index` of conf layer `name`; in a net that is not unrolled,
        the layer `name` itself for index 0."""
        if not self.unrolled:
            try:
                return self.layer(name) if index == 0 else None
            except KeyError:
                return None
        copies = self._copies.get(name, [])
        return copies[index] if 0 <= index < len(copies) else None

    def head(self, param: Param) -> Param:
        """The param that carries `param`'s gradient: copy 0's for a param of
        an unrolled copy i > 0, else the param itself."""
        return self._heads.get(id(param), param)

    def layer(self, name: str) -> Layer:
        for lyr in self.layers:
            if lyr.name == name:
                return lyr
        raise KeyError(name)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def set_rng(self, rng) -> None:
        for lyr in self.layers:
            lyr.rng = rng

    def share_params_from(self, other: NeuralNet) -> None:
        """Use `other`'s param values (matched by name), as SINGA's test and
        validation nets share the training net's params."""
        theirs = {p.name: p for p in other.params}
        for p in self.params:
            q = theirs.get(p.name)
            if q is not None and q.shape == p.shape:
                p.owner = q.owner or q
                p.data = q.data

    def close(self) -> None:
        for lyr in self.layers:
            lyr.close()

    def __repr__(self) -> str:
        return (f"NeuralNet({PHASE_NAMES.get(self.phase, self.phase)}, "
                f"{len(self.layers)} layers, {sum(p.size for p in self.params if p.owner is None)} params)")

