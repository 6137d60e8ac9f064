"""`singa sweep`: job arrays. `singa sweep CONF --set PATH=V1,V2 ...` submits
one job per point of the sweep (`singa sweep run`, the default: a first
argument that is no subcommand is the conf); `singa sweep show ARRAY` tables
the array's jobs best first and writes the best one's job.conf.

The work is runtime.jobs.sweep's; this module parses, prints and sets the
exit code: 2 for any problem (nothing created), 1 when `show` finds no best
job yet.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from singa_cli import fmt
from singa_cli.submit import submit_options


class SweepGroup(click.Group):
    """`singa sweep CONF ...` is `singa sweep run CONF ...`: a first argument
    that names no subcommand and is not a help option goes to `run`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=SweepGroup, subcommand_metavar="CONF --set PATH=V1,V2 ... | show ARRAY")
def sweep() -> None:
    """Job arrays: one job per point of a sweep of conf fields, and their results.

    \b
      singa sweep job.conf --set updater.learning_rate.base_lr=0.1,0.01 \\
                           --set 'neuralnet.layer[fc1].innerproduct_conf.num_output=256,512'
      singa sweep show 3

    The first form is `singa sweep run` (see singa sweep run --help); a conf
    file named like a subcommand (show, run) is given as ./show.
    """


@sweep.command("run")
@click.argument("conf", type=click.Path())
@click.option("--set", "sets", multiple=True, metavar="PATH=V1,V2,...",
              help="A field of the conf and its values, e.g. updater.learning_rate.base_lr="
                   "0.1,0.01 or 'neuralnet.layer[fc1].innerproduct_conf.num_output=256,512' "
                   "([name] selects layers or params by name, [N] by index); repeatable: "
                   "the jobs are every combination.")
@click.option("--random", "random_n", type=click.IntRange(1), default=None, metavar="N",
              help="Submit N points drawn at random from the combinations (all of them when "
                   "N is at least their number).")
@click.option("--seed", type=int, default=None,
              help="Seed of the --random draw (default: drawn, and kept with the array).")
@click.option("--max-restarts", type=click.IntRange(0), default=0, show_default=True,
              help="Relaunch a failed job from its latest checkpoint up to N times.")
@submit_options
def run(conf: str, sets: tuple[str, ...], random_n: int | None, seed: int | None,
        execs: tuple[str, ...], protos: tuple[str, ...], **kw: Any) -> None:
    """Submit one job per point of the sweep, as one array; always detached.

    Job I of array A is named NAME[I] (NAME: --name, else the conf's name)
    and works in its own workspace, <its conf's workspace>/arrayA-I. Its
    jobs queue like any job (--cores, --priority, --after apply to each).

    Every --set, and the job of every point, is checked before anything is
    submitted: a problem is reported with exit code 2 and nothing is
    created. A job that cannot be submitted later (hosts, placement)
    withdraws the array: the jobs it already has are killed (and listed by
    singa list --all).
    """
    from runtime import plugins
    from runtime.jobs import jobdb
    from runtime.jobs import sweep as sweeps
    from runtime.jobs.submit import SubmitOptions

    seen: set[str] = set()

    def warn(line: str) -> None:  # each job would repeat the conf's warnings
        if line not in seen:
            seen.add(line)
            click.echo(line, err=True)

    kw["modules"] = plugins.with_protos(protos, tuple(execs) + tuple(kw.get("modules", ())))
    opts = SubmitOptions(**kw, warn=warn)
    p = sweeps.plan(conf, sets, opts, random_n=random_n, seed=seed)
    with jobdb.JobDB() as reg:
        array_id, ids = sweeps.submit_array(p, opts, reg)
    many = "s" if len(ids) != 1 else ""
    click.echo(f"Submitted array {array_id}: {len(ids)} job{many} (id{many} {sweeps.id_span(ids)})")
    click.echo(f"  singa list                the array's jobs, under the array\n"
               f"  singa sweep show {array_id:<8} their settings and results, best first", err=True)


@sweep.command("show")
@click.argument("array_id", metavar="ARRAY", type=int)
@click.option("--out", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Where to write the best job's conf (default: <conf stem>-best.conf here).")
@click.option("--by", type=click.Choice(["accuracy", "loss"]), default="accuracy",
              show_default=True, help="What makes a job best: the highest final test "
                                      "accuracy, or the lowest final test loss.")
def show(array_id: int, out: str | None, by: str) -> None:
    """Table an array's jobs, best first, and write the best job's conf.

    Each job's final metrics are its last test-phase record (in its
    workspace's metrics.jsonl), else the last values it reported while
    training (marked *). Jobs that have not SUCCEEDED come last. The best
    job's conf is the submitted conf with its settings applied, in protobuf
    text (comments are not kept; relative paths are as in the conf, so run
    it from where the sweep was submitted). Exit code 1, and no file, when
    no job has SUCCEEDED with a metric yet.
    """
    from runtime.jobs import jobdb
    from runtime.jobs import sweep as sweeps

    with jobdb.JobDB() as reg:
        array = reg.array(array_id)
        jobs = [reg.reconcile(j) for j in reg.array_jobs(array_id)]
    rows = sweeps.ranked(jobs, by)
    click.echo(_render(array, rows, by))
    top = sweeps.best(rows)
    if top is None:
        if any(not j.terminal for j in jobs):
            click.echo(f"No best job yet: none has SUCCEEDED with a metric; run 'singa sweep "
                       f"show {array_id}' again once one has (singa list shows the jobs).")
        else:
            click.echo("No best job: the array's jobs have all ended, none SUCCEEDED with a "
                       "metric (singa view JOB says why a job ended).")
        sys.exit(1)
    job, final = top
    text = sweeps.best_conf(array, job, lambda line: click.echo(line, err=True))
    stem = Path(array.get("conf_path") or "job.conf").stem
    path = Path(out) if out else Path.cwd() / f"{stem}-best.conf"
    try:
        path.write_text(text)
    except OSError as e:
        from runtime.errors import UserError

        raise UserError(f"--out {path}: cannot write the best job's conf ({e.strerror or e})") \
            from None
    from runtime.config import override

    click.echo(f"Best: job {job.id} ({job.name}): {override.label(job.settings)}; "
               f"{_metric_words(final)}")
    click.echo(f"Wrote its conf to {path}")


def _render(array: dict[str, Any], rows: list[tuple[Any, Any]], by: str) -> str:
    from runtime.config import override
    from runtime.jobs import jobdb
    from runtime.jobs import sweep as sweeps

    spec = array["spec"]
    settings = [(p, list(v)) for p, v in spec.get("settings", [])]
    varied = [p for p, v in settings if len(v) > 1]
    short = override.short_names([p for p, _ in settings])
    counts = fmt.counts([j.state for j, _ in rows], jobdb.STATES)
    out = [f"Array {array['id']}: {array['name']}, {len(rows)} job{'s' if len(rows) != 1 else ''}"
           + (f" ({counts})" if counts else "") + f", from {array.get('conf_path') or '-'}"]
    what = " x ".join(f"{short[p]} ({len(v)} value{'s' if len(v) != 1 else ''})"
                      for p, v in settings if p in varied)
    fixed = ", ".join(f"{short[p]}={v[0]}" for p, v in settings if p not in varied)
    if spec.get("random") is not None:
        out.append(f"Sweep: {spec.get('points', len(rows))} drawn at random (seed "
                   f"{spec.get('seed')}) from {what or 'one point'}" + (f"; {fixed}" if fixed else ""))
    else:
        out.append(f"Sweep: grid of {what or 'one point'}" + (f"; {fixed}" if fixed else ""))
    sources = {f.source for _, f in rows if f.source}
    tested = sources == {sweeps.TEST}
    acc_h, loss_h = ("TEST ACCURACY", "TEST LOSS") if tested else ("ACCURACY", "LOSS")
    out.append(f"Ranked by {'highest' if by == 'accuracy' else 'lowest'} final "
               f"{'test ' if tested else ''}{by}"
               + ("" if tested or not sources else
                  "; * the last value reported while training (no test-phase record)"))
    header = ["INDEX", "JOB ID", "STATE", *[short[p] for p in varied], acc_h, loss_h, "ELAPSED"]
    table = []
    for j, f in rows:
        mark = "*" if f.source == sweeps.REPORTED else ""
        table.append([str(j.array_index), str(j.id), j.state,
                      *[str(j.settings.get(p, "-")) for p in varied],
                      f"{f.accuracy:.4f}{mark}" if f.accuracy is not None else "-",
                      f"{f.loss:.4f}{mark}" if f.loss is not None else "-",
                      fmt.dur(j.elapsed)])
    out.append("")
    out.append(fmt.table(header, table))
    return "\n".join(out)


def _metric_words(final: Any) -> str:
    where = "test " if final.source == "test" else "last reported "
    parts = [f"{where}accuracy {final.accuracy:.4f}" if final.accuracy is not None else "",
             f"{where}loss {final.loss:.4f}" if final.loss is not None else ""]
    return ", ".join(p for p in parts if p)
