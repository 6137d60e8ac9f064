"""Job arrays (sweeps): one job per point of a sweep of field-path overrides
of a job.conf (`runtime.config.override`), recorded as one array of the
registry. What `singa sweep` does:

    p = sweep.plan("job.conf", ["updater.learning_rate.base_lr=0.1,0.01"], opts)
    array_id, job_ids = sweep.submit_array(p, opts, reg)

`plan` finds every problem that depends on the sweep before anything exists
(no array row, no job row, no process): a bad `--set` (its path or a value,
with the nearest valid names: `override.check` on the parsed job), a bad
`--after`, and every point whose job does not validate. Each point (they are
distinct) is loaded once with its overrides, as `submit` loads it: about
15 ms a point for examples/mnist's MLP, so a grid of 1000 points is checked in
~15 s before the first job is queued.

`submit_array` records the array, then submits each point with
`runtime.jobs.submit.submit`, so its jobs queue under the same rules as any
job. A problem found only then (the hosts, the placement, a job master that
cannot start) withdraws the array: the jobs it already has are killed
(KILLED, the reason naming the job that failed) and stay in the registry,
where `singa list --all` shows them; an array that got no job is removed.
Either way the caller gets a UserError saying so.

Job I of array A works in its own workspace, `<its point's workspace>/arrayA-I`
(the point's workspace is the conf's `cluster.workspace`, unless the sweep
sets it), so no two jobs of a sweep share checkpoints or a metrics stream.

`final_metrics` and `ranked` are what `singa sweep show` tables: a job's
final test accuracy and loss from the last test-phase record of its metrics
stream (`<workspace>/metrics.jsonl`, `runtime.jobs.metrics`), else the last
values it reported to the registry (training or test, whichever came last).
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import UserError
from runtime.jobs import jobdb, metrics
from runtime.jobs.submit import SubmitOptions

#: failing points shown in full when a sweep does not validate (each may be many lines)
SHOWN_FAILURES = 5
BY = ("accuracy", "loss")
TEST = "test"           # Final.source: the last test-phase record of the metrics stream
REPORTED = "reported"   # Final.source: the registry row's last loss/accuracy


@dataclass
class Plan:
    """A validated sweep, ready for `submit_array`."""

    conf: str
    name: str                      # the array's; job I is named f"{name}[{I}]"
    points: list[dict[str, str]]   # field path -> value, in the order of the --set
    workspaces: list[str]          # each point's workspace, before the array's subdirectory
    spec: dict[str, Any]           # what the registry keeps (jobdb.create_array)


def plan(conf: str, sets: Sequence[str], opts: SubmitOptions, *, random_n: int | None = None,
         seed: int | None = None) -> Plan:
    """Parse the `--set` specs, check them on the parsed job, enumerate the
    points (the grid, or `random_n` of them drawn with `seed`; a seed is
    drawn and recorded when none is given) and validate the job of every
    point. Loads `opts.modules` first (the conf may need the user's protos).
    Any problem is one UserError (every bad `--set` at once; up to
    `SHOWN_FAILURES` failing points) and nothing is created."""
    from runtime import plugins
    from runtime.config import load_job, override, parse_text, read_text
    from runtime.jobs.submit import parse_after

    if not sets:
        raise UserError("give at least one --set PATH=V1,V2,... (e.g. --set "
                        "updater.learning_rate.base_lr=0.1,0.01)")
    if seed is not None and random_n is None:
        raise UserError("--seed draws the points of --random N; give --random too")
    settings, problems = [], []
    for k, given in enumerate(sets, 1):
        try:
            settings.append(override.parse_set(given, f"--set #{k}"))
        except UserError as e:
            problems.append(str(e))
    if problems:
        raise UserError("\n".join(problems))
    modules = plugins.expand(opts.modules)
    plugins.load(modules)
    parse_after(opts.after)
    job, _ = parse_text(read_text(conf), conf)
    override.check(job, settings)
    if random_n is not None:
        if seed is None:  # recorded in the array, so that the draw can be repeated
            seed = random.SystemRandom().randrange(2**31)
        points = override.sample(settings, random_n, seed)
    else:
        points = override.grid(settings)
    workspaces, failures = [], []
    for i, point in enumerate(points):
        try:
            loaded = load_job(conf, strict=True, submit=True, overrides=tuple(point.items()),
                              later_checkpoints=bool(opts.after))
        except UserError as e:
            failures.append(f"point {i} ({override.label(point)}):\n"
                            + "\n".join("  " + line for line in str(e).splitlines()))
            continue
        for w in loaded.warnings:
            opts.warn(str(w))
        workspaces.append(opts.workspace or loaded.proto.cluster.workspace)
    if failures:
        more = len(failures) - SHOWN_FAILURES
        raise UserError(f"{conf}: {len(failures)} of the sweep's {len(points)} points do not "
                        "validate; nothing was submitted:\n"
                        + "\n".join(failures[:SHOWN_FAILURES])
                        + (f"\n... and {more} more point(s)" if more > 0 else ""))
    spec = {"conf_path": os.path.abspath(conf),
            "settings": [[s.path, list(s.values)] for s in settings],
            "random": random_n, "seed": seed, "points": len(points), "modules": list(modules)}
    name = opts.name or job.name or Path(conf).stem
    return Plan(conf, name, points, workspaces, spec)


def submit_array(p: Plan, opts: SubmitOptions, reg: jobdb.JobDB) -> tuple[int, list[int]]:
    """Record the array and submit one job per point (see the module doc);
    returns the array's id and its jobs' ids, by index. `opts` holds what
    every job shares; each job gets its point, workspace, name and index."""
    from runtime.jobs.submit import parse_after, submit

    for parent, _ in parse_after(opts.after):  # as create_job would, but before the array
        try:
            reg.job(parent)
        except UserError as e:
            raise UserError(f"--after {parent}: {e}") from None
    array_id = reg.create_array(p.name, p.spec["conf_path"], p.spec)
    spaces = [os.path.join(ws, f"array{array_id}-{i}") for i, ws in enumerate(p.workspaces)]
    taken = [ws for ws in spaces if os.path.exists(ws)]
    if taken:
        # a fresh array's directory that exists was left by a registry that numbered
        # arrays anew: its checkpoints and metrics would pass for this job's
        reg.drop_array(array_id)
        raise UserError(f"the workspace {taken[0]} of a job of this sweep exists already (left "
                        f"by an earlier registry?); move it away and submit again")
    ids: list[int] = []
    for i, point in enumerate(p.points):
        one = dataclasses.replace(opts, overrides=tuple(point.items()), workspace=spaces[i],
                                  name=f"{p.name}[{i}]", array_id=array_id, array_index=i)
        try:
            ids.append(submit(p.conf, one, reg))
        except (Exception, KeyboardInterrupt) as e:
            user = isinstance(e, (UserError, KeyboardInterrupt))
            why = "interrupted" if isinstance(e, KeyboardInterrupt) else str(e)
            told = _withdraw(reg, array_id, i, len(p.points), why, opts.grace)
            if not user:
                e.add_note(told)
                raise  # a bug keeps its traceback
            raise UserError(told) from None
    return array_id, ids


def _withdraw(reg: jobdb.JobDB, array_id: int, i: int, n: int, why: str, grace: float) -> str:
    """Kill the jobs array `array_id` has (or drop it when it has none) after
    job `i` of `n` could not be submitted; what happened, in words."""
    from runtime.jobs.kill import kill_job

    head = f"job {i} of the sweep's {n} could not be submitted: {why}"
    jobs = reg.array_jobs(array_id)
    if not jobs:
        reg.drop_array(array_id)
        return f"{head}\nnothing was submitted"
    for j in jobs:
        kill_job(reg, j.id, grace=grace,
                 reason=f"array {array_id} withdrawn: its job {i} could not be submitted")
    ids = f"id{'s' if len(jobs) > 1 else ''} {id_span([j.id for j in jobs])}"
    return (f"{head}\narray {array_id} is withdrawn: its {len(jobs)} job(s) already submitted "
            f"({ids}) were killed; 'singa list --all' shows them")


def id_span(ids: Sequence[int]) -> str:
    """"4-7" for consecutive ids, else "4, 6, 9"."""
    if ids and list(ids) == list(range(ids[0], ids[0] + len(ids))):
        return f"{ids[0]}-{ids[-1]}" if len(ids) > 1 else str(ids[0])
    return ", ".join(map(str, ids))


# -- results ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Final:
    """A job's final metrics and where they come from: TEST, REPORTED or "" (none)."""

    accuracy: float | None
    loss: float | None
    source: str


def final_metrics(job: jobdb.Job) -> Final:
    """The job's last test-phase record of worker group 0 that has a metric
    (accuracy; loss, or an energy model's squared_error), else the registry
    row's last reported values, else none."""
    for rec in reversed(metrics.read(job.workspace) if job.workspace else []):
        if rec.get("phase") == "test" and not rec.get("group"):
            acc, loss = _num(rec.get("accuracy")), _num(rec.get("loss", rec.get("squared_error")))
            if acc is not None or loss is not None:
                return Final(acc, loss, TEST)
    if job.accuracy is not None or job.loss is not None:
        return Final(job.accuracy, job.loss, REPORTED)
    return Final(None, None, "")


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def ranked(jobs: Sequence[jobdb.Job], by: str = "accuracy") -> list[tuple[jobdb.Job, Final]]:
    """The jobs with their final metrics, best first: SUCCEEDED jobs by `by`
    (accuracy: highest first, ties by lowest loss, then the jobs with a loss
    only, lowest first; loss: lowest first, then the jobs with an accuracy
    only), then those with no metric; then every job that has not
    SUCCEEDED (still queued or running, or failed), by index."""
    if by not in BY:
        raise ValueError(f"by must be one of {BY}, got {by!r}")
    out = [(j, final_metrics(j)) for j in jobs]

    def key(item: tuple[jobdb.Job, Final]) -> tuple[Any, ...]:
        j, f = item
        order = (j.array_index if j.array_index is not None else 0, j.id)
        if j.state != jobdb.SUCCEEDED:
            return (3, 0.0, 0.0, *order)
        first, second = (f.accuracy, f.loss) if by == "accuracy" else (f.loss, f.accuracy)
        sign = -1.0 if by == "accuracy" else 1.0   # accuracy: higher is better; loss: lower
        if first is not None:
            return (0, sign * first, -sign * second if second is not None else math.inf, *order)
        if second is not None:
            return (1, -sign * second, 0.0, *order)
        return (2, 0.0, 0.0, *order)

    return sorted(out, key=key)


def best(rows: Sequence[tuple[jobdb.Job, Final]]) -> tuple[jobdb.Job, Final] | None:
    """The first of `ranked` rows if it SUCCEEDED with a metric, else None."""
    if rows and rows[0][0].state == jobdb.SUCCEEDED and rows[0][1].source:
        return rows[0]
    return None


def best_conf(array: dict[str, Any], job: jobdb.Job, warn: Callable[[str], None]) -> str:
    """The job.conf text of `job`'s point: the conf it was submitted with
    (`job.conf_text`) with its settings applied (`override.render`); the
    array's `.proto` modules are loaded first, for the conf's [ext] blocks."""
    from runtime import plugins
    from runtime.config import extensions, override

    protos = [m for m in array["spec"].get("modules", ()) if extensions.is_proto_module(m)]
    if protos:
        plugins.load(protos)
    if job.conf_text is None:
        raise UserError(f"job {job.id} has no conf text in the registry; cannot write its conf")
    path = array.get("conf_path") or job.conf_path or "job.conf"
    if job.conf_path and os.path.exists(path) and Path(path).read_text() != job.conf_text:
        warn(f"note: {path} changed since the sweep; the conf written is the one it ran")
    return override.render(job.conf_text, path, list(job.settings.items()))
