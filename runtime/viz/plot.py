"""Training curves from a job's metrics stream, drawn with matplotlib.

    result = plot_metrics(metrics.read(workspace), "out.png", title="mnist (job 3)")

One row of two panels per metric: the metric against the training step (left)
and against wall time since the job's first record (right). Each worker group
has its colour; the phase sets the line style (train: solid, test: dashed with
dots, validation: dotted with squares), so an async job shows one line per
group. When the stream has server records of several worker groups (async) or
any stale update, a last row shows the servers' mean and maximum staleness
against wall time, one line per group (and server, if several).

The contract the tests rely on: `plot_metrics` returns a `PlotResult` whose
`lines` are read back from the drawn figure (x and y data of each line, with
the panel and legend label), so a caller can check that what was drawn is what
was logged. The picture is written atomically (temporary name, then rename);
the format follows the suffix (.png, .svg, .pdf).

`plot_norms` draws the per-layer norms that `debug: true` writes
(`runtime.train.debug`) the same way, one panel per kind of norm.

matplotlib is used without pyplot (a `Figure` and its own canvas), so no GUI
backend is chosen and nothing global is touched.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from runtime.errors import UserError

#: record keys that are not metrics of the net
META_KEYS = frozenset({"time", "step", "phase", "group", "worker", "server"})
#: bookkeeping values of train records: plotted only when asked for with --metric
EXTRA_KEYS = ("lr", "samples_per_s")
SERVER_KEYS = ("staleness_mean", "staleness_max", "updates")
PHASES = ("train", "validation", "test")
_STYLE: dict[str, dict[str, Any]] = {"train": dict(linestyle="-", marker=None),
          "validation": dict(linestyle=":", marker="s", markersize=3),
          "test": dict(linestyle="--", marker="o", markersize=3),
          "server": dict(linestyle="-", marker="o", markersize=3)}
FORMATS = (".png", ".svg", ".pdf")


@dataclass
class Curve:
    """One line's data: `metric` of `phase` for worker group `group`
    (for server curves, `phase` is "server" and `server` names it)."""

    metric: str
    phase: str
    group: int
    steps: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)    # seconds since the stream's first record
    values: list[float] = field(default_factory=list)
    server: str | None = None


@dataclass
class Line:
    """A line as drawn: the panel's title, the x axis label, its legend label, its data."""

    panel: str
    xlabel: str
    label: str
    x: list[float]
    y: list[float]


@dataclass
class PlotResult:
    path: Path
    title: str
    curves: list[Curve]
    lines: list[Line]


def _num(v: object) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def metric_names(records: Iterable[dict]) -> list[str]:
    """Every numeric key of the records that can be plotted: the net's metrics
    (loss first, then accuracy, then the rest by name), then lr,
    samples_per_s and the servers' keys when present."""
    net: set[str] = set()
    other: set[str] = set()
    for r in records:
        for k, v in r.items():
            if k in META_KEYS or not _num(v):
                continue
            if r.get("phase") == "server" or k in EXTRA_KEYS:
                other.add(k)
            else:
                net.add(k)
    first = [k for k in ("loss", "accuracy") if k in net]
    ordered = first + sorted(net - set(first))
    return ordered + [k for k in (*EXTRA_KEYS, *SERVER_KEYS) if k in other] + sorted(
        other - set(EXTRA_KEYS) - set(SERVER_KEYS))


def default_metrics(records: Sequence[dict]) -> list[str]:
    """What `singa plot` draws unless told: the metrics of the net's loss
    layers (not lr, samples/s or server counters)."""
    return [m for m in metric_names(records) if m not in EXTRA_KEYS and m not in SERVER_KEYS]


def curves(records: Sequence[dict], metric: str) -> list[Curve]:
    """The lines of one metric: per phase (train, validation, test) and
    worker group, or per group and server for the servers' keys, each in the
    order of the stream. Times are seconds since the stream's first record."""
    t0 = min((r["time"] for r in records if _num(r.get("time"))), default=0.0)
    out: dict[tuple[str | int, int, str], Curve] = {}
    for r in records:
        phase = r.get("phase")
        v = r.get(metric)
        if not _num(v) or not _num(r.get("time")):
            continue
        group = int(r.get("group", 0) or 0)
        if phase == "server":
            srv = str(r.get("server", ""))
            key: tuple[str | int, int, str] = ("server", group, srv)
            c = out.setdefault(key, Curve(metric, "server", group, server=srv))
            c.steps.append(float(r.get("updates", len(c.steps))))
        elif phase in PHASES and _num(r.get("step")):
            key = (PHASES.index(phase), group, "")
            c = out.setdefault(key, Curve(metric, phase, group))
            c.steps.append(float(r["step"]))
        else:
            continue
        c.times.append(float(r["time"]) - t0)
        c.values.append(float(v))
    return [out[k] for k in sorted(out, key=lambda k: (str(k[0]), k[1], k[2]))]


def _time_unit(span_s: float) -> tuple[float, str]:
    if span_s >= 3 * 3600:
        return 3600.0, "h"
    if span_s >= 3 * 60:
        return 60.0, "min"
    return 1.0, "s"


def _label(c: Curve, groups: int, servers: int) -> str:
    if c.phase == "server":
        s = f"group {c.group}"
        return s + (f" (server {c.server})" if servers > 1 else "")
    return c.phase + (f" group {c.group}" if groups > 1 else "")


def _has_async(records: Sequence[dict]) -> bool:
    srv = [r for r in records if r.get("phase") == "server"]
    groups = {int(r.get("group", 0) or 0) for r in srv}
    return len(groups) > 1 or any(_num(r.get("staleness_max")) and r["staleness_max"] > 0
                                  for r in srv)


def _save(fig, path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"{path}: cannot tell the picture format from the suffix "
                        f"{suffix or '(none)'!r}; use one of {', '.join(FORMATS)}")
    if path.parent and not path.parent.is_dir():
        raise UserError(f"{path}: the folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")
    try:
        fig.savefig(tmp, format=suffix[1:], dpi=100)
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def _lines_of(fig) -> list[Line]:
    out = []
    for ax in fig.axes:
        for ln in ax.get_lines():
            label = ln.get_label()
            if label.startswith("_"):
                continue
            out.append(Line(ax.get_title(), ax.get_xlabel(), label,
                            [float(x) for x in ln.get_xdata()], [float(y) for y in ln.get_ydata()]))
    return out


def _new_figure(rows: int, cols: int, title: str):
    from matplotlib.figure import Figure  # matplotlib only when drawing

    fig = Figure(figsize=(6.0 * cols, 3.2 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.suptitle(title, fontsize=13, fontweight="bold")
    return fig, axes


def plot_metrics(records: Sequence[dict], path: str | Path, title: str,
                 metrics: Sequence[str] | None = None, staleness: bool | None = None) -> PlotResult:
    """Draw `metrics` (default: `default_metrics`) of a metrics stream to `path`.

    `staleness`: add the servers' staleness row (None: when the job is async,
    see the module docstring). Raises UserError when the stream has no
    record to draw, or a metric it does not have (naming those it has).
    """
    records = list(records)
    path = Path(path)
    known = metric_names(records)
    if metrics:
        unknown = [m for m in metrics if m not in known]
        if unknown:
            raise UserError(f"no metric {', '.join(repr(m) for m in unknown)} in the metrics "
                            f"stream; it has: {', '.join(known) or 'nothing yet'}")
        wanted = list(dict.fromkeys(metrics))
    else:
        wanted = default_metrics(records)
    if staleness is None:
        staleness = not metrics and _has_async(records)
    rows_of: list[tuple[str, list[Curve]]] = [(m, curves(records, m)) for m in wanted]
    rows_of = [(m, cs) for m, cs in rows_of if cs]
    stale_rows = [(m, curves(records, m)) for m in ("staleness_mean", "staleness_max")] \
        if staleness else []
    stale_rows = [(m, cs) for m, cs in stale_rows if cs]
    if not rows_of and not stale_rows:
        raise UserError("the metrics stream has no train or test records to plot yet")

    every = [c for _, cs in rows_of + stale_rows for c in cs]
    span = max((t for c in every for t in c.times), default=0.0)
    unit, uname = _time_unit(span)
    groups = len({c.group for c in every})
    servers = len({c.server for c in every if c.server is not None})
    nrows = len(rows_of) + (1 if stale_rows else 0)
    fig, axes = _new_figure(nrows, 2, title)
    for i, (m, cs) in enumerate(rows_of):
        ax_step, ax_time = axes[i]
        for c in cs:
            style = dict(_STYLE[c.phase], color=f"C{c.group % 10}", linewidth=1.4,
                         label=_label(c, groups, servers))
            if len(c.steps) == 1:  # one point draws no line: show it as a dot
                style["marker"] = style["marker"] or "o"
            ax_step.plot(c.steps, c.values, **style)
            ax_time.plot([t / unit for t in c.times], c.values, **style)
        if all(c.phase == "server" for c in cs):  # servers count updates, not steps
            ax_step.set_title(f"{m} by updates applied")
            ax_step.set_xlabel("updates applied (per group)")
        else:
            ax_step.set_title(f"{m} by step")
            ax_step.set_xlabel("step")
        ax_time.set_title(f"{m} by wall time")
        ax_time.set_xlabel(f"wall time ({uname})")
        for ax in (ax_step, ax_time):
            ax.set_ylabel(m)
    if stale_rows:
        row = axes[nrows - 1]
        for ax, (m, cs) in zip(row, stale_rows):
            order = sorted({x.server or "" for x in cs})
            for c in cs:
                # servers report every few seconds: few points, so each is marked
                ax.plot([t / unit for t in c.times], c.values, color=f"C{c.group % 10}",
                        linewidth=1.4, marker="o", markersize=4 if len(c.values) < 30 else 0,
                        linestyle=["-", "--", ":"][order.index(c.server or "") % 3],
                        label=_label(c, groups, servers))
            ax.set_title(f"{m.replace('_', ' ')} of updates (versions)")
            ax.set_xlabel(f"wall time ({uname})")
            ax.set_ylabel("staleness (versions)")
        for ax in row[len(stale_rows):]:
            ax.set_visible(False)
    for ax in fig.axes:
        if ax.get_visible():
            ax.grid(True, alpha=0.3)
            if ax.get_lines():
                ax.legend(fontsize=8, loc="best")
    lines = _lines_of(fig)
    _save(fig, path)
    return PlotResult(path, title, [c for _, cs in rows_of + stale_rows for c in cs], lines)


def plot_norms(records: Sequence[dict], path: str | Path, title: str) -> PlotResult:
    """Draw the per-layer norms of `runtime.train.debug.read` (one record per layer
    and display step) against the step: the layers' data and gradients, the
    params' values and gradients, one line per layer or param, log scale."""
    records = list(records)
    panels: dict[str, dict[str, Curve]] = {k: {} for k in ("data", "grad", "param", "param grad")}
    for r in records:
        if not _num(r.get("step")):
            continue
        step = float(r["step"])
        # the first worker's lines carry plain names; the others' say whose they are
        suffix = ""
        if (r.get("group"), r.get("worker")) not in ((0, 0), (None, None)):
            suffix = f" (worker {r.get('group', 0)}/{r.get('worker', 0)})"
        who = r.get("layer", "?") + suffix
        for kind in ("data", "grad"):
            if _num(r.get(kind)):
                c = panels[kind].setdefault(who, Curve(kind, "debug", 0))
                c.steps.append(step)
                c.values.append(float(r[kind]))
        for pname, pv in (r.get("params") or {}).items():
            for kind, key in (("param", "data"), ("param grad", "grad")):
                if _num(pv.get(key)):
                    c = panels[kind].setdefault(pname + suffix, Curve(key, "debug", 0))
                    c.steps.append(step)
                    c.values.append(float(pv[key]))
    shown = [(k, cs) for k, cs in panels.items() if cs]
    if not shown:
        raise UserError("no per-layer norms to plot: the job has no debug records "
                        "(set `debug: true` in its job.conf; they are written at display steps)")
    rows = math.ceil(len(shown) / 2)
    fig, axes = _new_figure(rows, 2, title)
    names = {"data": "layer output", "grad": "layer gradient", "param": "param values",
             "param grad": "param gradient"}
    flat = [ax for row in axes for ax in row]
    for ax, (kind, cs) in zip(flat, shown):
        for i, (name, c) in enumerate(cs.items()):
            positive = any(v > 0 for v in c.values)
            ax.plot(c.steps, c.values, color=f"C{i % 10}",
                    linestyle=["-", "--", ":", "-."][i // 10 % 4], linewidth=1.3, label=name)
            if positive:
                ax.set_yscale("log")
        ax.set_title(f"{names[kind]}: mean |x| by step")
        ax.set_xlabel("step")
        ax.set_ylabel("mean absolute value")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best", ncol=2 if len(cs) > 8 else 1)
    for ax in flat[len(shown):]:
        ax.set_visible(False)
    lines = _lines_of(fig)
    _save(fig, Path(path))
    return PlotResult(Path(path), title, [c for _, cs in shown for c in cs.values()], lines)
