"""`singa plot JOB [-o FILE.png|.svg] [--metric NAME]... [--norms]`: training curves.

JOB is a job id from the registry (running or ended), or a job's workspace
folder. The curves come from the job's metrics stream
(`<workspace>/metrics.jsonl`, see runtime/jobs/metrics.py): each metric of
the net's loss layers against the step and against wall time, train and
test (and validation), one line per worker group for async jobs, and the
servers' staleness when groups run asynchronously (runtime/viz/plot.py).
`--metric` picks what to draw instead (repeatable; e.g. `lr`,
`samples_per_s`, `staleness_mean`); `--norms` draws the per-layer norms that
`debug: true` records. A running job is drawn as far as it has got.

The picture goes to FILE (the format from its suffix: .png, .svg or .pdf;
default `<job name>-job<ID>.png`, or `...-norms.png`, in the current folder).
"""
from __future__ import annotations

import re
from pathlib import Path

import click

from runtime.errors import UserError


def _job_source(job: str) -> tuple[Path, str, str]:
    """(workspace, title, default file stem) of JOB: a job id or a workspace folder."""
    if job.isdigit():
        from runtime.jobs import jobdb

        with jobdb.JobDB() as reg:
            j = reg.reconcile(reg.job(int(job)))
        if not j.workspace:
            raise UserError(f"job {j.id} ({j.name}) has no workspace recorded: nothing to plot")
        status = j.state.lower()
        if j.step is not None:
            status += f" at step {j.step}" + (f" of {j.train_steps}" if j.train_steps else "")
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", j.name or "job") + f"-job{j.id}"
        return Path(j.workspace), f"{j.name} (job {j.id}, {status})", stem
    ws = Path(job)
    if ws.is_file() and ws.name.endswith(".jsonl"):
        ws = ws.parent
    if not ws.is_dir():
        raise UserError(f"{job}: not a job id and not a workspace folder; give the id that "
                        "'singa list --all' shows, or the job's workspace")
    name = ws.resolve().name
    return ws, name, re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


@click.command("plot")
@click.argument("job", metavar="JOB")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="The picture to write: .png, .svg or .pdf [default: <name>-job<ID>.png].")
@click.option("--metric", "metrics", multiple=True, metavar="NAME",
              help="Plot this metric (loss, accuracy, lr, samples_per_s, staleness_mean, ...) "
                   "instead of the net's metrics; repeatable.")
@click.option("--norms", is_flag=True,
              help="Plot the per-layer norms of data, gradients and params (debug: true).")
def plot(job: str, output: str | None, metrics: tuple[str, ...], norms: bool) -> None:
    """Plot a job's training and test curves (or --norms) to a PNG or SVG."""
    ws, title, stem = _job_source(job)
    if norms and metrics:
        raise UserError("--norms and --metric draw different pictures: give one of them")
    out = Path(output) if output else Path(f"{stem}{'-norms' if norms else ''}.png")
    from runtime.viz import plot  # matplotlib only for this verb

    if norms:
        from runtime.train import debug

        recs = debug.read(ws)
        if not recs:
            raise UserError(f"no per-layer norms in {ws}/{debug.VIS_DIR}: the job records them "
                            "at display steps when its job.conf sets `debug: true`")
        res = plot.plot_norms(recs, out, f"{title}: per-layer norms")
        steps = sorted({r["step"] for r in recs if "step" in r})
        click.echo(f"wrote {out}: {len(res.curves)} lines, steps {steps[0]}..{steps[-1]}")
        return
    from runtime.jobs import metrics as metrics_stream

    recs = metrics_stream.read(ws)
    if not recs:
        raise UserError(f"no metrics yet in {ws / metrics_stream.FILE}: a job writes them from "
                        "its first display or test step on")
    res = plot.plot_metrics(recs, out, title, list(metrics) or None)
    shown = list(dict.fromkeys(c.metric for c in res.curves))
    groups = sorted({c.group for c in res.curves if c.phase != "server"})
    steps = [s for c in res.curves if c.phase != "server" for s in c.steps]
    span = f", steps {min(steps):.0f}..{max(steps):.0f}" if steps else ""
    click.echo(f"wrote {out}: {', '.join(shown)}; {len(res.curves)} curves"
               + (f", {len(groups)} worker groups" if len(groups) > 1 else "") + span)
