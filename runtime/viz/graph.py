"""The net of a job as a graph picture: layers, partitions, connection layers.

    g = net_graph(job_proto)                 # the training net, as SINGA would lay it out
    draw(g, "net.png")                       # through Graphviz `dot` (.png, .svg, .pdf)
    to_json(g)                               # SINGA's visualization/*.json node-link form

What is drawn is SINGA's graph of one phase (reference §2.4 and §6):
the layers of the phase in topological order with the `split(<name>)`
layers the builder inserts; for the training net over `nworkers_per_group`
partitions (n > 1), n nodes per layer named `<name>@<p>`, in one box per
partition (the worker that runs them), with the connection layers SINGA adds
where the partition dimensions of a source and its consumer differ
(`slice(<src>)` -> `concate(slice(<src>))`, or `split(<src>)` ->
`concate(split(<src>))`, and a `bridge_src(...)` -> `bridge_dst(...)` pair
for every edge into a concate layer that crosses partitions). A net whose
layers all have partition_dim 0 is n replicas with edges p -> p. (`net_graph`
lays the graph out from the one-partition net by SINGA's rules without
setting the partitions up; `graph_of` below draws what the net builder
built, which is what the workers run.)

Each node shows its name, its layer type, its output shape (of one
partition) and its params with their shapes; it is coloured by kind (input,
neuron, loss, output, connection, user), connection layers are drawn as
hexagons, and the layers the builder added (not in the job.conf) have a
dashed border. The title names the job, the phase and the partitions, with a
colour legend.

`graph_of(net)` draws a net the builder made (the partitioned graph as it
runs, e.g. for `singa validate --graph`), and `write_visualization(job)`
writes SINGA's `visualization/train_net.json` (and `test_net.json`) to the
workspace when a job runs.
"""
from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conf import job_pb2
from runtime.errors import UserError

KINDS = {  # kind -> fill colour
    "input": "#cfe2f3",
    "neuron": "#fff2cc",
    "loss": "#f4cccc",
    "output": "#d9ead3",
    "connection": "#f6b26b",
    "user": "#e6e6e6",
}
PARTITION_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2",
                     "#7f7f7f", "#bcbd22"]
PHASES = {"train": job_pb2.kTrain, "test": job_pb2.kTest, "validation": job_pb2.kVal}
FORMATS = (".png", ".svg", ".pdf")
DOT_TIMEOUT_S = 60.0

_kOneToAll = 1


@dataclass
class Node:
    """One layer (or one partition of it) in the picture."""

    id: str                        # "ip1", or "ip1@0" when partitioned
    layer: str                     # the layer's name
    type: str                      # "InnerProduct", or the user_type
    kind: str                      # a key of KINDS
    partition: int | None = None
    shape: tuple[int, ...] = ()
    params: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    added: bool = False            # inserted by the net builder, not in the job.conf


@dataclass
class Graph:
    name: str
    phase: str
    npartitions: int
    nodes: list[Node]
    edges: list[tuple[str, str]]

    def node(self, node_id: str) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)


@dataclass
class _Layer:
    name: str
    type: str
    type_id: int
    kind: str
    pdim: int
    conn: int
    shape: tuple[int, ...]
    params: list[tuple[str, tuple[int, ...]]]
    added: bool


def _kind(type_id: int, layer=None) -> str:
    if 100 <= type_id < 200:
        return "input"
    if 200 <= type_id < 300:
        return "neuron"
    if 300 <= type_id < 400:
        return "loss"
    if 400 <= type_id < 500:
        return "output"
    if 500 <= type_id < 600:
        return "connection"
    if layer is not None and getattr(layer, "is_input", False):
        return "input"
    if layer is not None and getattr(layer, "is_loss", False):
        return "loss"
    return "user"


def _type_name(proto: job_pb2.LayerProto) -> str:
    if proto.user_type:
        return proto.user_type
    name = job_pb2.LayerType.Name(proto.type)
    return name[1:] if name.startswith("k") else name


def phase_of(name: str) -> int:
    try:
        return PHASES[name]
    except KeyError:
        raise UserError(f"unknown phase {name!r}; expected one of {', '.join(PHASES)}") from None


def net_graph(job: job_pb2.JobProto, phase: str = "train",
              npartitions: int | None = None) -> Graph:
    """The graph of `job`'s net in `phase` ("train", "test", "validation").

    `npartitions` defaults to SINGA's: `nworkers_per_group` for the training
    net, 1 for the others. Raises `ConfigError`/`UserError` when the net
    cannot be built (the same problems `singa validate` reports).
    """
    from runtime.neuralnet.net import NeuralNet  # registers the layers

    ph = phase_of(phase)
    if npartitions is None:
        npartitions = max(1, job.cluster.nworkers_per_group) if ph == job_pb2.kTrain else 1
    net = NeuralNet.create(job.neuralnet, ph, 1, allocate=False)
    conf_names = {l.name for l in job.neuralnet.layer}
    layers: dict[str, _Layer] = {}
    for l in net.layers:
        layers[l.name] = _Layer(
            l.name, _type_name(l.proto), l.proto.type, _kind(l.proto.type, l),
            l.proto.partition_dim if l.proto.partition_dim in (0, 1) else 0,
            getattr(l, "src_neuron_connection", 0), tuple(l.shape),
            [(p.name, tuple(p.shape)) for p in l.params],
            l.name not in conf_names)
    edges = [(s.name, l.name) for l in net.layers for s in net.srclayers(l)
             if s.name in layers]
    net.close()
    if npartitions > 1:
        edges = _partition_connections(layers, edges)
    nodes, out_edges = _create_graph(layers, edges, npartitions)
    return Graph(job.name or "job", phase, npartitions, nodes, out_edges)


def _add(layers: dict[str, _Layer], name: str, type_id: int, pdim: int) -> str:
    base, k = name, 1
    while name in layers:  # a model split layer of the same name exists
        k += 1
        name = f"{base}#{k}"
    layers[name] = _Layer(name, _type_name(job_pb2.LayerProto(type=type_id)), type_id,
                          "connection", pdim, 0, (), [], True)
    return name


def _partition_connections(layers: dict[str, _Layer], edges: list[tuple[str, str]]
                           ) -> list[tuple[str, str]]:
    """SINGA's AddPartitionConnectionLayers: slice/split -> concate where a
    source's partition dimension does not suit its consumer."""
    out = []
    for s, d in edges:
        ps, pd, conn = layers[s].pdim, layers[d].pdim, layers[d].conn
        if (ps == pd == 0) or (ps == pd == 1 and conn != _kOneToAll):
            out.append((s, d))
            continue
        if pd == 1 and conn == _kOneToAll:
            mid = _add(layers, f"split({s})", job_pb2.kSplit, ps)
        else:
            mid = _add(layers, f"slice({s})", job_pb2.kSlice, ps)
        cat = _add(layers, f"concate({mid})", job_pb2.kConcate, pd)
        out += [(s, mid), (mid, cat), (cat, d)]
    return out


def _part_shape(shape: tuple[int, ...], pdim: int, n: int) -> tuple[int, ...]:
    if n <= 1 or pdim >= len(shape):
        return shape
    s = list(shape)
    s[pdim] = max(1, s[pdim] // n)
    return tuple(s)


def _create_graph(layers: dict[str, _Layer], edges: list[tuple[str, str]], n: int
                  ) -> tuple[list[Node], list[tuple[str, str]]]:
    """SINGA's CreateGraph: n nodes per layer, edges p -> p, all-to-all into
    a concate layer through bridge pairs where partitions differ."""
    def node(l: _Layer, p: int | None) -> Node:
        return Node(l.name if p is None else f"{l.name}@{p}", l.name, l.type, l.kind, p,
                    _part_shape(l.shape, l.pdim, n), list(l.params), l.added)

    if n <= 1:
        return [node(l, None) for l in layers.values()], list(edges)
    nodes = [node(l, p) for p in range(n) for l in layers.values()]
    out: list[tuple[str, str]] = []
    for s, d in edges:
        if layers[d].type_id != job_pb2.kConcate:
            out += [(f"{s}@{p}", f"{d}@{p}") for p in range(n)]
            continue
        for i in range(n):
            for j in range(n):
                src, dst = f"{s}@{i}", f"{d}@{j}"
                if i == j:
                    out.append((src, dst))
                    continue
                bs, bd = f"bridge_src({src}->{dst})", f"bridge_dst({src}->{dst})"
                for name, tid, p in ((bs, job_pb2.kBridgeSrc, i), (bd, job_pb2.kBridgeDst, j)):
                    nodes.append(Node(name, name, _type_name(job_pb2.LayerProto(type=tid)),
                                      "connection", p, (), [], True))
                out += [(src, bs), (bs, bd), (bd, dst)]
    return nodes, out


def graph_of(net, name: str = "job", phase: str = "train",
             conf_layers: set[str] | None = None) -> Graph:
    """The graph of a built `NeuralNet`: its layers in its order, one node
    per layer (`name@p` in its partition's box when the net is
    partitioned), the edges between them (a bridge pair links two
    partitions), output shapes and params as the builder set them up.
    `conf_layers`: the job.conf's layer names; the others are drawn as added
    by the builder (default: the connection layers)."""
    from runtime.neuralnet.partition import whole_name
    from runtime.neuralnet.unroll import origin_name

    parts = getattr(net, "npartitions", 1)
    nodes = []
    for l in net.layers:
        conf = origin_name(whole_name(l.name))
        added = (conf not in conf_layers) if conf_layers is not None else \
            500 <= l.proto.type < 600
        nodes.append(Node(l.name, conf, _type_name(l.proto), _kind(l.proto.type, l),
                          l.proto.partition_id if parts > 1 else None, tuple(l.shape),
                          [(p.name, tuple(p.shape)) for p in l.params], added))
    known = {n.id for n in nodes}
    edges = [(s.name, l.name) for l in net.layers for s in net.srclayers(l) if s.name in known]
    return Graph(name, phase, parts, nodes, edges)


def write_visualization(job: job_pb2.JobProto, train_net=None) -> list[Path]:
    """SINGA's `<workspace>/visualization/train_net.json` (the training net
    over `nworkers_per_group` partitions, or `train_net` when given: a whole
    partitioned graph) and `test_net.json` (when the job tests). Never
    raises: a picture must not stop a job (a failure is logged)."""
    import logging

    from runtime.neuralnet.net import NeuralNet

    out: list[Path] = []
    try:
        folder = Path(job.cluster.workspace) / "visualization"
        folder.mkdir(parents=True, exist_ok=True)
        conf = {l.name for l in job.neuralnet.layer}
        name = job.name or "job"
        nets = [("train", job_pb2.kTrain, train_net)]
        if job.test_steps > 0:
            nets.append(("test", job_pb2.kTest, None))
        for phase, ph, net in nets:
            built = net is None
            if built:
                n = max(1, job.cluster.nworkers_per_group) if ph == job_pb2.kTrain else 1
                net = NeuralNet.create(job.neuralnet, ph, n, allocate=False)
            try:
                out.append(write_json(graph_of(net, name, phase, conf),
                                      folder / f"{phase}_net.json"))
            finally:
                if built:
                    net.close()
    except Exception as e:  # noqa: BLE001
        logging.getLogger(__name__).warning("could not write the net's visualization: %s", e)
    return out


# -- output ------------------------------------------------------------------------------------

def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) if shape else ""


def _label(n: Node) -> str:
    head = f"<b>{html.escape(n.id)}</b>"
    kind = html.escape(n.type) + (f"  {_dims(n.shape)}" if n.shape else "")
    if n.id.startswith(("bridge_src(", "bridge_dst(")):
        # SINGA's full name is long; show the kind and the edge it carries
        src, _, dst = n.id[n.id.index("(") + 1:-1].partition("->")
        head = f"<b>{n.id[:10]}@{n.partition}</b>"
        kind = f"{html.escape(src)} &#8594; {html.escape(dst)}"
    rows = [head, f"<font point-size='10'>{kind}</font>"]
    if n.params:
        ps = ", ".join(f"{html.escape(p)} {_dims(s)}" for p, s in n.params)
        rows.append(f"<font point-size='9' color='#444444'>{ps}</font>")
    return "<" + "<br/>".join(rows) + ">"


def _legend(g: Graph) -> str:
    used = [k for k in KINDS if any(n.kind == k for n in g.nodes)]
    cells = "".join(f"<td bgcolor='{KINDS[k]}' border='1'>&nbsp;{k}&nbsp;</td>" for k in used)
    parts = (f"{g.npartitions} partitions (one box per worker of a group)"
             if g.npartitions > 1 else "1 partition")
    title = html.escape(f"{g.name}: {g.phase} net, {parts}")
    return (f"<<table border='0' cellspacing='3'><tr><td colspan='{max(1, len(used))}'>"
            f"<font point-size='18'><b>{title}</b></font></td></tr>"
            f"<tr>{cells}</tr></table>>")


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(g: Graph) -> str:
    """The Graphviz text of the picture (see the module docstring)."""
    lines = ["digraph net {",
             f"  graph [label={_legend(g)}, labelloc=t, fontname=Helvetica, rankdir=TB, "
             "nodesep=0.3, ranksep=0.35];",
             "  node [fontname=Helvetica, style=\"filled,rounded\", shape=box, penwidth=1.2];",
             "  edge [color=\"#555555\", arrowsize=0.7];"]

    def node_line(n: Node) -> str:
        shape = "hexagon" if n.kind == "connection" else "box"
        style = "filled,dashed" if n.added else ("filled" if shape != "box" else "filled,rounded")
        return (f"    {_q(n.id)} [label={_label(n)}, fillcolor={_q(KINDS[n.kind])}, "
                f"shape={shape}, style={_q(style)}];")

    if g.npartitions > 1:
        for p in range(g.npartitions):
            colour = PARTITION_COLOURS[p % len(PARTITION_COLOURS)]
            lines += [f"  subgraph cluster_p{p} {{",
                      f"    label=<<b>partition {p}</b> (worker {p})>; color={_q(colour)}; "
                      "penwidth=2; style=rounded; fontname=Helvetica;"]
            lines += [node_line(n) for n in g.nodes if n.partition == p]
            lines.append("  }")
        lines += ["  " + node_line(n).strip() for n in g.nodes if n.partition is None]
    else:
        lines += [node_line(n)[2:] for n in g.nodes]
    for s, d in g.edges:
        lines.append(f"  {_q(s)} -> {_q(d)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_json(g: Graph, labels: dict[str, str] | None = None) -> dict:
    """SINGA's visualization JSON: `{"directed": 1, "nodes": [{"id", "label",
    "color", ...}], "links": [{"source", "target"}]}` with node indices as
    link ends. `labels` replaces a node's label (by node id or layer name)."""
    index = {n.id: i for i, n in enumerate(g.nodes)}
    labels = labels or {}
    nodes = []
    for n in g.nodes:
        d: dict[str, Any] = {"id": n.id, "label": labels.get(n.id, labels.get(n.layer, n.id)),
             "type": n.type, "kind": n.kind, "color": KINDS[n.kind]}
        if n.partition is not None:
            d["partition"] = n.partition
        nodes.append(d)
    links = [{"source": index[s], "target": index[d]} for s, d in g.edges
             if s in index and d in index]
    return {"directed": 1, "nodes": nodes, "links": links}


def dot_binary() -> str:
    exe = shutil.which("dot")
    if exe is None:
        raise UserError("Graphviz's 'dot' program was not found on PATH; install Graphviz "
                        "(Debian/Ubuntu: apt-get install graphviz) to draw nets")
    return exe


def render(dot_text: str, path: str | Path) -> Path:
    """Run Graphviz `dot` on `dot_text`, writing `path` (format from its
    suffix) atomically. Raises UserError if dot is missing or fails."""
    path = Path(path)
    fmt = path.suffix.lower()
    if fmt not in FORMATS:
        raise UserError(f"{path}: cannot tell the picture format from the suffix "
                        f"{fmt or '(none)'!r}; use one of {', '.join(FORMATS)}")
    if not path.parent.is_dir():
        raise UserError(f"{path}: the folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{fmt}")
    args = [dot_binary(), f"-T{fmt[1:]}", "-Gdpi=96", "-o", str(tmp)]
    try:
        r = subprocess.run(args, input=dot_text, capture_output=True, text=True,
                           timeout=DOT_TIMEOUT_S)
        if r.returncode != 0 or not tmp.exists():
            raise UserError(f"Graphviz dot could not draw {path} (exit {r.returncode}): "
                            f"{r.stderr.strip()[:500]}")
        os.replace(tmp, path)
    except subprocess.TimeoutExpired:
        raise UserError(f"Graphviz dot took more than {DOT_TIMEOUT_S:.0f} s to draw {path}; "
                        "the net may be too large to draw") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def draw(g: Graph, path: str | Path) -> Path:
    """Draw `g` to `path` (.png, .svg or .pdf)."""
    return render(to_dot(g), path)


def write_json(g: Graph, path: str | Path, labels: dict[str, str] | None = None) -> Path:
    path = Path(path)
    path.write_text(json.dumps(to_json(g, labels), indent=1))
    return path
