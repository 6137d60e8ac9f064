"""Unrolling a recurrent net for BPTT, as SINGA's `NeuralNet::Unrolling`.

Every layer becomes
`unroll_len` copies named `<i>#<name>` with `unroll_index` i, and its params
`<i>#<pname>`; copies i > 0 share their params with copy 0 (`share_from:
"0#<pname>"`): the values *and* the gradient array, which the copies add to
under `kAggGrad`, so that copy 0's params carry the sum over time steps and
only they are sent as updates (the copies are marked `trainable = False`).
A copy's srclayers follow `unroll_conn_type` (one per srclayer, default
kUnrollOneToOne) and `shift`: OneToOne links copy j to the source's copy
j - shift (copies j < shift get no edge from that source); OneToAll links
every copy to all of the source's copies; FirstToLast links copy 0 to the
source's last copy. A layer class with `takes_previous_copy = True` (GRU)
also gets copy j - 1 as its last srclayer.

Which nets are unrolled: SINGA v0.3 unrolls, and so renames, every net. Here
a net is unrolled when one of its layers has `unroll_len > 1` or is of a
layer class marked `recurrent = True` (GRU, CharRNN, RNNLabel, RNNDummy,
CharRNNOutput), so that a recurrent net's params are named as SINGA names
them (a sampling net with unroll_len 1 loads `0#<pname>` from the training
checkpoint) while feed-forward nets keep their plain names (and their
checkpoints). `create(..., unroll=True/False)` overrides the rule.
"""
from __future__ import annotations

from collections.abc import Callable

from conf import job_pb2
from runtime.errors import Problem, UserError
from runtime.neuralnet.layer import layer_registry

Locate = Callable[[int, str], str]

UNROLL_SEP = "#"


def _layer_class(proto: job_pb2.LayerProto):
    """The registered class of a proto's type, or None when there is none."""
    try:
        return layer_registry.lookup(proto.type, proto.user_type)
    except UserError:
        return None


def needs_unrolling(protos: list[tuple[int, job_pb2.LayerProto]]) -> bool:
    """Whether a net of these layers is unrolled (see the module docstring):
    a layer has unroll_len > 1 or is of a class marked `recurrent`."""
    return any(p.unroll_len > 1 or getattr(_layer_class(p), "recurrent", False)
               for _, p in protos)


def unrolled_name(name: str, index: int) -> str:
    """The name of copy `index` of layer or param `name` (SINGA's `<i>#<name>`)."""
    return f"{index}{UNROLL_SEP}{name}"


def origin_name(name: str) -> str:
    """The conf name an unrolled layer or param name comes from ("3#gru" -> "gru")."""
    head, sep, rest = name.partition(UNROLL_SEP)
    return rest if sep and head.isdigit() else name


def unroll_protos(protos: list[tuple[int, job_pb2.LayerProto]], locate: Locate
           ) -> tuple[list[tuple[int, job_pb2.LayerProto]], list[Problem]]:
    """SINGA's `NeuralNet::Unrolling`: each layer's `unroll_len` copies, wired
    by `unroll_conn_type` and `shift` (see the module docstring).

    Returns the copies as (index of the original in NetProto.layer, proto)
    in conf order (the copies of a layer together, by unroll_index), and the
    problems found. A srclayer that is not in the phase keeps its plain
    name, so that the builder reports it as for any net. Layer protos keep
    `unroll_len` (the number of copies) and lose `unroll_conn_type`/`shift`.
    """
    problems: list[Problem] = []
    groups: dict[str, list[job_pb2.LayerProto]] = {}
    out: list[tuple[int, job_pb2.LayerProto]] = []
    originals: list[tuple[int, job_pb2.LayerProto]] = []
    for i, proto in protos:
        if proto.name in groups:
            continue  # a duplicate name: the builder keeps the first
        originals.append((i, proto))
        n = max(1, proto.unroll_len)
        copies = []
        for k in range(n):
            q = job_pb2.LayerProto()
            q.CopyFrom(proto)
            q.name = unrolled_name(proto.name, k)
            q.unroll_index = k
            q.unroll_len = n
            q.ClearField("unroll_conn_type")
            q.ClearField("shift")
            del q.srclayers[:]
            for param in q.param:
                if k > 0:
                    param.share_from = unrolled_name(param.name, 0)
                elif param.share_from and origin_name(param.share_from) == param.share_from:
                    # a conf-level share_from names a conf param: its copy 0
                    # (SINGA wants "0#w" written out; both spellings work here)
                    param.share_from = unrolled_name(param.share_from, 0)
                param.name = unrolled_name(param.name, k)
            copies.append(q)
            out.append((i, q))
        groups[proto.name] = copies

    OneToOne, OneToAll = job_pb2.kUnrollOneToOne, job_pb2.kUnrollOneToAll
    FirstToLast = job_pb2.kUnrollFirstToLast
    for i, proto in originals:
        copies = groups[proto.name]
        types, shifts = list(proto.unroll_conn_type), list(proto.shift)
        nsrc = len(proto.srclayers)
        if len(types) > nsrc:
            problems.append(Problem(locate(i, "unroll_conn_type"),
                                    f"{len(types)} unroll_conn_type values for {nsrc} srclayers; "
                                    "give one per srclayer, in the same order"))
        if len(shifts) > nsrc:
            problems.append(Problem(locate(i, "shift"),
                                    f"{len(shifts)} shift values for {nsrc} srclayers; give one "
                                    "per srclayer, in the same order"))
        for s_idx, src in enumerate(proto.srclayers):
            ctype = types[s_idx] if s_idx < len(types) else OneToOne
            shift = shifts[s_idx] if s_idx < len(shifts) else 0
            srcs = groups.get(src)
            if srcs is None:
                for q in copies:
                    q.srclayers.append(src)
                continue
            if ctype == OneToAll:
                for q in copies:
                    q.srclayers.extend(c.name for c in srcs)
            elif ctype == FirstToLast:
                copies[0].srclayers.append(srcs[-1].name)
            elif ctype == OneToOne:
                if shift < 0:
                    problems.append(Problem(locate(i, f"shift[{s_idx}]"),
                                            f"shift must be >= 0, got {shift}"))
                    continue
                last = len(copies) - 1 - shift
                if last >= len(srcs):
                    problems.append(Problem(
                        locate(i, f"srclayers[{s_idx}]"),
                        f"'{proto.name}' has {len(copies)} unrolled copies and connects one to "
                        f"one (unroll_conn_type kUnrollOneToOne, shift {shift}) to '{src}', "
                        f"which has {len(srcs)}; set unroll_conn_type: kUnrollOneToAll for this "
                        "srclayer, or give both layers the same unroll_len"))
                    continue
                for j, q in enumerate(copies):
                    if j >= shift:
                        q.srclayers.append(srcs[j - shift].name)
            else:
                name = job_pb2.UnrollConnType.Name(ctype) if ctype in \
                    job_pb2.UnrollConnType.values() else str(ctype)
                problems.append(Problem(
                    locate(i, f"unroll_conn_type[{s_idx}]"),
                    f"unroll_conn_type {name} is not implemented (nor is it in SINGA v0.3); use "
                    "kUnrollOneToOne, kUnrollOneToAll or kUnrollFirstToLast"))
        if getattr(_layer_class(proto), "takes_previous_copy", False):
            for j in range(1, len(copies)):
                copies[j].srclayers.append(copies[j - 1].name)
    return out, problems
