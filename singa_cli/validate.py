"""`singa validate CONF [--json] [--strict] [--module M] [--proto P] [--graph FILE]`:
check a job.conf and say what the job is.

`--graph FILE.png|.svg|.pdf` also draws the training net through Graphviz
`dot`: with several workers per group, every partition (`name@p`, one box
and colour per worker) with the connection layers the builder inserts
(split, slice, concate, bridge pairs between workers), as the job runs it.

`--module` imports the user's modules (their layers, updaters... register
under their user_type names) and `--proto` compiles and loads the user's
`.proto` files, whose `[ext] { }` blocks then parse; an `[ext]` that nothing
loaded defines is an error at its LINE:COL.

Valid: exit 0 and print the layers of each phase with their output shapes,
the params, algorithm, updater and learning-rate schedule, the triggers, the
cluster plan and the estimated memory of its processes (`--json`: the same as
one JSON object), then the warnings. A process that needs more memory than
this host has is an error, more than half of it a warning
(runtime.config.memory).
Invalid: exit 2 and print every problem, one per line, `PATH:LINE:COL: message`
(errors first, then warnings). A bug in singa itself exits 1 with a one-line
message (`SINGA_DEBUG=1` shows the traceback). A data file that exists nowhere is a warning,
since the data may live only on the job's hosts; `--strict` makes it an error.
"""
from __future__ import annotations

import json
import os
import sys

import click

from runtime.errors import ConfigError, UserError
from singa_cli.options import module_option, proto_option


@click.command()
@click.argument("conf", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("--strict", is_flag=True,
              help="Treat missing data files (and other data warnings) as errors.")
@module_option(
              help="Import a module (dotted name or .py file) that registers user layers, "
                   "updaters or algorithms first; repeatable.")
@proto_option(
              help="A .proto of the user's own config messages (extending LayerProto, "
                   "JobProto, UpdaterProto...), compiled and loaded first, so its [ext] { } "
                   "blocks parse; repeatable.")
@click.option("--graph", "graph_path", type=click.Path(dir_okay=False), default=None,
              metavar="FILE.png|.svg",
              help="Draw the training net, partitioned over the workers of a group, to FILE "
                   "(.png, .svg or .pdf; needs Graphviz dot).")
def validate(conf: str, as_json: bool, strict: bool, modules: tuple[str, ...],
             protos: tuple[str, ...] = (), graph_path: str | None = None) -> None:
    """Check a job.conf and print what the job is."""
    from runtime import plugins
    from runtime.config import load_job  # keep `singa --help` fast
    from runtime.config.describe import describe, render

    try:
        plugins.load(plugins.with_protos(protos, modules))
        job = load_job(conf, strict=strict)
        d = describe(job)
        text = json.dumps({"valid": True, **d}, indent=2) if as_json else render(d)
        if graph_path:
            _draw(job, graph_path)
    except ConfigError as e:
        warnings = getattr(e, "warnings", [])
        if as_json:
            click.echo(json.dumps({"valid": False, "path": conf,
                                   "errors": [_problem(p) for p in e.problems],
                                   "warnings": [_problem(p) for p in warnings]}, indent=2))
        for p in e.problems:
            click.echo(str(p), err=True)
        for p in warnings:
            click.echo(str(p), err=True)
        n = len(e.problems)
        click.echo(f"{conf}: {n} error{'s' if n != 1 else ''}"
                   + (f", {len(warnings)} warning{'s' if len(warnings) != 1 else ''}"
                      if warnings else ""), err=True)
        sys.exit(2)
    except UserError as e:
        if as_json:
            click.echo(json.dumps({"valid": False, "path": conf,
                                   "errors": [{"where": conf, "message": str(e),
                                               "severity": "error"}],
                                   "warnings": []}, indent=2))
        click.echo(f"singa: {e}", err=True)
        sys.exit(2)
    except Exception as e:
        if os.environ.get("SINGA_DEBUG"):
            raise
        click.echo(f"singa: internal error while validating {conf}: {type(e).__name__}: {e} "
                   "(a bug in singa; set SINGA_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)
    click.echo(text)


def _draw(job, path: str) -> None:
    """The training net (partitioned when the group has several workers) to `path`."""
    from conf import job_pb2
    from runtime.viz import graph

    v = job.validation
    net = getattr(v, "partitioned", None) or job.nets.get(job_pb2.kTrain) \
        or next(iter(job.nets.values()), None)
    if net is None:
        raise UserError(f"--graph {path}: no net of {job.path} could be built to draw")
    phase = "train" if net.phase == job_pb2.kTrain else ("test" if net.phase == job_pb2.kTest
                                                          else "validation")
    g = graph.graph_of(net, job.proto.name or "job", phase,
                       {layer.name for layer in job.proto.neuralnet.layer})
    graph.draw(g, path)
    click.echo(f"wrote {path}: {phase} net of {job.proto.name or 'job'}, {len(g.nodes)} nodes, "
               f"{len(g.edges)} edges, {g.npartitions} partition"
               + ("s" if g.npartitions != 1 else ""), err=True)


def _problem(p) -> dict:
    return {"where": p.where, "message": p.message, "severity": p.severity}
