"""Partitioning a net over the workers of a group (SINGA's
`AddPartitionConnectionLayers` and `CreateGraph`, reference §6).

`expand(order, srcs, n)` turns the layers of a one-partition net (in
topological order, split layers already inserted) into the nodes of the
partitioned graph, in one topological order of the whole graph:

- n nodes per layer, `name@p` with `partition_id` p. A layer's
  `partition_dim` (0 = batch, 1 = feature; -1 counts as 0) defaults to the
  net's. Input layers read batchsize/n records, InnerProduct and
  Convolution layers with dim 1 have num_output/n (num_filters/n) neurons.
- For each edge src -> dst, SINGA's eight-row table (`connection`) says
  whether partition p of dst reads partition p of src directly, or through
  connection layers: `slice(src)` (kSlice along dst's dim, partitioned like
  src) or `split(src)` (kSplit), then `concate(slice(src))` /
  `concate(split(src))` (kConcate along src's dim, partitioned like dst).
  Every partition i of the slice/split feeds every partition j of the
  concate: directly when i == j, else through a pair
  `bridge_src(slice(src)@i->concate(slice(src))@j)` (partition i) ->
  `bridge_dst(...)` (partition j). A second edge out of the same source that
  needs the same kind of connection gets `slice(src->dst)`, so names stay
  unique.

The order: each layer's partitions follow the connection layers of its
incoming edges, which come as slice/split@0..n-1, their bridge_src halves,
the bridge_dst halves, then concate@0..n-1. So in every partition a stage
sends (bridge_src) before it receives (bridge_dst), and running each
partition's nodes in this order, with blocking receives, cannot deadlock
(forward, and backward in reverse).

Gradient scale. Each worker's loss layer averages over its batch partition
(B/n instances), and the servers average the gradients of a replicated
(dim 0) param over its n replicas: inside a batch-partitioned region every
gradient is n times the whole net's, and the servers' averaging makes the
update right. A feature-partitioned (dim 1) param has a single copy, which
nobody averages, so its region must carry the whole net's gradient. The
concate layers at the borders rescale it (`grad_scale`): the gradient
going from a dim-0 consumer back into dim-1 layers is divided by n
(`concate(slice(x))` with x dim 1, the consumer dim 0), and the gradient
going from dim-1 consumers back into dim-0 layers is multiplied by n
(`concate(...)` with x dim 0, the consumer dim 1). Every param of the group
then gets the gradient of the unpartitioned net (SINGA leaves dim-1
gradients n times too large, i.e. an n times larger learning rate for them).

Params. A dim-0 layer's params keep their names in every partition (they
are replicas; the servers sum their gradients). A dim-1 layer's params are
renamed `name@p`: rows p*r..(p+1)*r-1 of the conf param of r*n rows, a
separate param with its own slices on the servers. The builder also keeps,
in the nets that hold partition 0, the conf param whole (`wholes`) with the
partitions' values as row views of it: the group's first worker
initialises, tests and checkpoints the conf params, so checkpoints carry the
same names and values as an unpartitioned net's.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from conf import job_pb2
from runtime.errors import Problem
from runtime.neuralnet.layer import Layer, kOneToAll

PART_SEP = "@"

# layer types that divide their output neurons for partition_dim 1
FEATURE_TYPES = (job_pb2.kInnerProduct, job_pb2.kConvolution, job_pb2.kCConvolution,
                 job_pb2.kCudnnConv)
# param-less layers whose output neuron k depends on input neuron k's
# neighbourhood only (so a feature partition is closed under them)
ELEMENTWISE_TYPES = (job_pb2.kReLU, job_pb2.kSigmoid, job_pb2.kSTanh, job_pb2.kActivation,
                     job_pb2.kDropout, job_pb2.kPooling, job_pb2.kCPooling, job_pb2.kCudnnPool,
                     job_pb2.kCudnnActivation, job_pb2.kLRN, job_pb2.kCudnnLRN,
                     job_pb2.kSplit, job_pb2.kDummy)
# across channels: with the channels split, the window misses its neighbours
ACROSS_CHANNELS = (job_pb2.kLRN, job_pb2.kCudnnLRN)


def part_name(name: str, p: int) -> str:
    """SINGA's name of partition p of layer (or dim-1 param) `name`."""
    return f"{name}{PART_SEP}{p}"


def whole_name(name: str) -> str:
    """The conf name of a partition's name ("ip1@1" -> "ip1", "w@0" -> "w")."""
    head, sep, tail = name.rpartition(PART_SEP)
    return head if sep and tail.isdigit() else name


def pdim(proto: job_pb2.LayerProto) -> int:
    """A layer's partition dimension: 1 for feature, else 0 (batch; SINGA's
    -1, "no partition", still makes n batch partitions)."""
    return 1 if proto.partition_dim == 1 else 0


def connection(src_pdim: int, dst_pdim: int, dst_conn: int) -> str | None:
    """SINGA's table: None (direct), "slice" or "split" (each then a concate).

    | src | dst | dst's src_neuron_connection | action          |
    |  0  |  0  | OneToOne                    | direct          |
    |  1  |  1  | OneToOne                    | direct          |
    |  0  |  0  | OneToAll                    | direct          |
    |  1  |  0  | OneToOne                    | slice -> concate |
    |  0  |  1  | OneToOne                    | slice -> concate |
    |  1  |  0  | OneToAll                    | slice -> concate |
    |  0  |  1  | OneToAll                    | split -> concate |
    |  1  |  1  | OneToAll                    | split -> concate |
    """
    if src_pdim == dst_pdim and (src_pdim == 0 or dst_conn != kOneToAll):
        return None
    if dst_pdim == 1 and dst_conn == kOneToAll:
        return "split"
    return "slice"


def grad_scale(src_pdim: int, dst_pdim: int, n: int) -> float:
    """What the concate between a src and a dst partitioned by `src_pdim`
    and `dst_pdim` multiplies the gradient by (see the module docstring)."""
    if src_pdim == 1 and dst_pdim == 0:
        return 1.0 / n
    if src_pdim == 0 and dst_pdim == 1:
        return float(n)
    return 1.0


@dataclass
class Node:
    """A layer of the partitioned graph, before the layer object exists."""

    proto: job_pb2.LayerProto
    srcs: list[str]                 # names of its sources, in order
    base: str                       # the one-partition layer it stands for (locations)
    partition: int
    bridge: int = -1                # a bridge half: the pair's id
    src_partition: int = 0          # a bridge half: the partitions it connects
    dst_partition: int = 0
    twin: str = ""                  # a bridge_dst: the node of its partition with its shape
    grad_scale: float = 1.0         # a concate: see grad_scale()
    dsts: list[str] | None = None   # a slice/split: consumers in partition order
    feature_params: bool = False    # a dim-1 layer whose params are split

    @property
    def name(self) -> str:
        return self.proto.name


def _proto(name: str, type_: int, p: int, n: int, dim: int) -> job_pb2.LayerProto:
    proto = job_pb2.LayerProto(name=name, type=type_)
    proto.partition_dim, proto.partition_id, proto.num_partitions = dim, p, n
    return proto


def expand(order: Sequence[Layer], srcs: dict[str, list[Layer]], n: int) -> list[Node]:
    """The nodes of the graph over n partitions, in the order of the module
    docstring. `order` is the one-partition net in topological order and
    `srcs` its sources per layer name (split layers inserted)."""
    nodes: list[Node] = []
    taken: set[str] = set()
    bridge_id = 0
    for layer in order:
        dst_dim = pdim(layer.proto)
        feeds: list[list[str]] = [[] for _ in range(n)]  # sources of each partition
        for src in srcs.get(layer.name, []):
            src_dim = pdim(src.proto)
            kind = connection(src_dim, dst_dim, layer.src_neuron_connection)
            if kind is None:
                for p in range(n):
                    feeds[p].append(part_name(src.name, p))
                continue
            cname = f"{kind}({src.name})"
            if cname in taken:
                cname = f"{kind}({src.name}->{layer.name})"
            catname = f"concate({cname})"
            taken.update((cname, catname))
            conn_nodes = []
            for i in range(n):
                proto = _proto(part_name(cname, i),
                               job_pb2.kSlice if kind == "slice" else job_pb2.kSplit, i, n, src_dim)
                if kind == "slice":
                    proto.slice_conf.slice_dim, proto.slice_conf.num_slices = dst_dim, n
                else:
                    proto.split_conf.num_splits = n
                proto.srclayers.append(part_name(src.name, i))
                conn_nodes.append(Node(proto, [part_name(src.name, i)], layer.name, i))
            pairs: dict[tuple[int, int], tuple[Node, Node]] = {}
            for i in range(n):
                for j in range(n):
                    if i == j:
                        continue
                    edge = f"{part_name(cname, i)}->{part_name(catname, j)}"
                    bs = Node(_proto(f"bridge_src({edge})", job_pb2.kBridgeSrc, i, n, src_dim),
                              [part_name(cname, i)], layer.name, i, bridge_id, i, j)
                    bd = Node(_proto(f"bridge_dst({edge})", job_pb2.kBridgeDst, j, n, dst_dim),
                              [bs.name], layer.name, j, bridge_id, i, j, twin=part_name(cname, j))
                    bs.proto.srclayers.append(part_name(cname, i))
                    bd.proto.srclayers.append(bs.name)
                    pairs[(i, j)] = (bs, bd)
                    bridge_id += 1
            for i, c in enumerate(conn_nodes):
                c.dsts = [part_name(catname, j) if j == i else pairs[(i, j)][0].name
                          for j in range(n)]
            cats = []
            for j in range(n):
                proto = _proto(part_name(catname, j), job_pb2.kConcate, j, n, dst_dim)
                proto.concate_conf.concate_dim, proto.concate_conf.num_concates = src_dim, n
                cat_srcs = [part_name(cname, j) if i == j else pairs[(i, j)][1].name
                            for i in range(n)]
                proto.srclayers.extend(cat_srcs)
                cats.append(Node(proto, cat_srcs, layer.name, j,
                                 grad_scale=grad_scale(src_dim, dst_dim, n)))
                feeds[j].append(proto.name)
            nodes += conn_nodes
            nodes += [pairs[k][0] for k in sorted(pairs)]
            nodes += [pairs[k][1] for k in sorted(pairs)]
            nodes += cats
        for p in range(n):
            proto = job_pb2.LayerProto()
            proto.CopyFrom(layer.proto)
            proto.name = part_name(layer.name, p)
            proto.partition_dim, proto.partition_id, proto.num_partitions = dst_dim, p, n
            del proto.srclayers[:]
            proto.srclayers.extend(feeds[p])
            split_params = dst_dim == 1 and len(proto.param) > 0
            if split_params:
                for param in proto.param:
                    param.name = part_name(param.name, p)
            nodes.append(Node(proto, feeds[p], layer.name, p, feature_params=split_params))
    return nodes


def local_nodes(nodes: Sequence[Node], partition: int) -> list[Node]:
    """The nodes one worker runs: those of `partition`, each bridge_dst
    without its (remote) source."""
    out = []
    for node in nodes:
        if node.partition != partition:
            continue
        if node.proto.type == job_pb2.kBridgeDst:
            node = Node(node.proto, [], node.base, node.partition, node.bridge,
                        node.src_partition, node.dst_partition, node.twin)
        out.append(node)
    return out


# ------------------------------------------------------------------ checks ---

Locate = Callable[[int, str], str]


def check(layers: Sequence[Layer], index: dict[str, int], locate: Locate, n: int,
          unrolled: bool, inherited: AbstractSet[str] = frozenset()) -> list[tuple[str, Problem]]:
    """What SINGA would run wrongly (or not at all) when `layers` (one
    partition, topological order) are partitioned over n workers:

    - input, loss and output layers partitioned by feature (an input layer
      reads whole instances, a loss or output layer needs all of an
      instance's values);
    - a feature partition of a layer that cannot divide its neurons: only
      InnerProduct and Convolution divide them (num_output/n,
      num_filters/n); element-wise and pooling layers keep their input's
      partition; other layers (softmax, user layers, RBM, GRU...) cannot;
    - a feature-partitioned InnerProduct with `transpose` (its W would be cut
      by columns), or whose params share values (share_from) with others;
    - feature partitions of an unrolled (recurrent) net;
    and, as a warning, LRN with its channels split (the window misses the
    channels of the other partitions). `inherited`: the layers whose
    partition_dim is the net's (the messages say so). Returns (layer name,
    problem) pairs.
    """
    out: list[tuple[str, Problem]] = []
    shared = {p.share_from for l in layers for p in l.proto.param if p.share_from}
    for layer in layers:
        proto = layer.proto
        if pdim(proto) != 1:
            continue
        i = index.get(layer.name, -1)
        where = locate(i, "" if layer.name in inherited else "partition_dim")
        from_net = " (the net's partition_dim)" if layer.name in inherited else ""
        t = proto.type
        kind = proto.user_type or job_pb2.LayerType.Name(t)
        head, sep, rest = layer.name.partition("#")
        name = rest if unrolled and sep and head.isdigit() else layer.name  # its conf name

        def bad(msg: str, severity: str = "error", layer: Layer = layer, where: str = where,
                name: str = name) -> None:
            out.append((layer.name, Problem(where, f"layer '{name}': {msg}", severity)))

        if getattr(layer, "is_input", False) or 100 <= t < 200:
            bad(f"partition_dim 1{from_net} on an input layer ({kind}); input layers are "
                "partitioned by batch only: set partition_dim: 0 on it")
        elif getattr(layer, "is_loss", False) or 300 <= t < 400:
            bad(f"partition_dim 1{from_net} on a loss layer ({kind}); a loss needs all the "
                "scores of each instance: set partition_dim: 0 on it")
        elif 400 <= t < 500:
            bad(f"partition_dim 1{from_net} on an output layer ({kind}); it needs all the "
                "values of each instance: set partition_dim: 0 on it")
        elif unrolled:
            bad(f"partition_dim 1{from_net} in a recurrent (unrolled) net; feature "
                "partitioning of unrolled layers is not supported: use partition_dim: 0")
        elif proto.user_type or (t not in FEATURE_TYPES and t not in ELEMENTWISE_TYPES):
            bad(f"partition_dim 1{from_net} on a {kind} layer, which cannot divide its "
                "neurons over partitions; only kInnerProduct and kConvolution layers are "
                "partitioned by feature (and the element-wise and pooling layers after them): "
                "set partition_dim: 0 on it")
        elif t == job_pb2.kInnerProduct and proto.innerproduct_conf.transpose:
            bad(f"partition_dim 1{from_net} on an InnerProduct layer with transpose: true; "
                "its weight would be cut by columns: set partition_dim: 0 on it")
        elif t in FEATURE_TYPES and any(p.share_from or p.name in shared for p in proto.param):
            bad(f"partition_dim 1{from_net} on a layer whose params share values "
                "(share_from); feature partitions have params of their own: set "
                "partition_dim: 0 on it")
        elif t in ACROSS_CHANNELS:
            bad(f"partition_dim 1{from_net}: LRN normalises across channels, and with the "
                f"channels split over {n} partitions each window misses the channels of the "
                "other partitions (SINGA does the same); set partition_dim: 0 on it for the "
                "unpartitioned result", "warning")
    return out

