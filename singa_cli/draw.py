"""`singa draw net|filters`: pictures of a model.

    singa draw net JOB.conf -o net.png [--phase train|test|validation] [--partitions N]
    singa draw filters CHECKPOINT --param w1 -o filters.png [--shape 28x28] [--count 100]

`net` draws the net of one phase as SINGA builds it: its layers with their
types, shapes and params, the split/slice/concate/bridge connection layers,
and for the training net one box per partition (`nworkers_per_group`, or
`--partitions`), through Graphviz `dot` (runtime/viz/graph.py); `--json` also
writes SINGA's visualization JSON. JOB.conf may also be the id of a
submitted job. `filters` draws the rows of a weight matrix of a checkpoint
(an RBM's or autoencoder's W) as a grid of image tiles (runtime/viz/filters.py).
"""
from __future__ import annotations

import os
from pathlib import Path

import click

from runtime.errors import UserError
from singa_cli.options import module_option


@click.group("draw")
def draw() -> None:
    """Draw a job's net graph or a checkpoint's filters as a picture."""


def _load_proto(conf: str, modules: tuple[str, ...]):
    from runtime import plugins

    plugins.load(modules)
    if conf.isdigit() and not os.path.exists(conf):
        from conf import job_pb2
        from runtime.jobs import jobdb

        with jobdb.JobDB() as reg:
            job = reg.job(int(conf))
        path = Path(job.log_dir or "") / "job.pb"
        if not job.log_dir or not path.exists():
            raise UserError(f"job {job.id} has no job.pb in its log folder {job.log_dir}; "
                            "draw its job.conf instead")
        return job_pb2.JobProto.FromString(path.read_bytes())
    from runtime.config import load_job

    return load_job(conf).proto


@draw.command("net")
@click.argument("conf", metavar="JOB.conf")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="The picture to write: .png, .svg or .pdf.")
@click.option("--phase", type=click.Choice(["train", "test", "validation"]), default="train",
              show_default=True, help="Which phase's net.")
@click.option("--partitions", type=click.IntRange(min=1), default=None,
              help="Partitions of the net [default: nworkers_per_group for train, else 1].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write SINGA's visualization JSON (nodes and links) here.")
@module_option(
              help="Import a module that registers user layers first; repeatable.")
def net(conf: str, output: str, phase: str, partitions: int | None, json_path: str | None,
        modules: tuple[str, ...]) -> None:
    """Draw the net of JOB.conf: layers, partitions and connection layers."""
    from runtime.viz import graph

    proto = _load_proto(conf, modules)
    g = graph.net_graph(proto, phase, partitions)
    if not g.nodes:
        raise UserError(f"{conf}: the {phase} net has no layers")
    graph.draw(g, output)
    if json_path:
        graph.write_json(g, json_path)
    conn = sum(1 for n in g.nodes if n.kind == "connection")
    click.echo(f"wrote {output}: {phase} net of {g.name}, {len(g.nodes)} nodes, "
               f"{len(g.edges)} edges, {g.npartitions} partition{'s' if g.npartitions != 1 else ''}"
               + (f", {conn} connection layers" if conn else ""))


@draw.command("filters")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--param", required=True, help="The param's name, e.g. w1.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="The PNG file to write.")
@click.option("--shape", default=None,
              help="A tile's shape: HxW, or 3xHxW for RGB [default: square].")
@click.option("--count", type=click.IntRange(min=1), default=100, show_default=True,
              help="How many filters (rows of the param).")
@click.option("--cols", type=click.IntRange(min=1), default=None,
              help="Tiles per row [default: a square grid].")
@click.option("--zoom", type=click.IntRange(min=1), default=2, show_default=True,
              help="Enlarge the picture N times.")
def filters(checkpoint: str, param: str, output: str, shape: str | None, count: int,
            cols: int | None, zoom: int) -> None:
    """Draw a param of CHECKPOINT (e.g. an RBM's W) as a grid of filter images."""
    if not Path(output).suffix.lower() == ".png":
        raise UserError(f"{output}: filters are drawn as PNG; give a file ending in .png")
    if not os.path.exists(checkpoint):
        raise UserError(f"{checkpoint}: no such checkpoint file (they are "
                        "<workspace>/checkpoint/step<N>-worker<W>)")
    try:
        from runtime.viz import filters
    except ModuleNotFoundError as e:
        if e.name != "runtime.viz.filters":
            raise
        raise UserError("drawing filters needs runtime/viz/filters.py, which this copy of "
                        "singa does not have") from None
    dims = filters.parse_shape(shape) if shape else None
    h, w = filters.draw(checkpoint, param, output, dims, count, cols, zoom)[:2]
    click.echo(f"wrote {output}: filters of {param}, {w}x{h} pixels")
