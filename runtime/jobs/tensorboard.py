"""TensorBoard event files of a job's metrics, written with tensorboardX.

The job master subscribes a `TensorBoardSink` to its `MetricsWriter`, so
every record of the metrics stream is also a TensorBoard scalar, and

    tensorboard --logdir <workspace>/tensorboard

shows the job while it runs. Layout: one run (sub-folder) per worker group,
`<workspace>/tensorboard/group<G>/`, so TensorBoard draws the groups of an
async job as lines of one chart per tag. Tags:

- `train/<metric>`, `test/<metric>`, `validation/<metric>` (loss, accuracy,
  ...), plus `train/lr` and `train/samples_per_s`, at the record's step;
- `server<g>.<s>/staleness_mean`, `.../staleness_max`, `.../updates`
  (server "g/s" in the metrics stream), at the number of updates it applied
  for that group as the step.

Every scalar carries the record's own wall time. Writes go through
tensorboardX's background writer and are flushed at most once a second
(`FLUSH_S`), so a running job is visible within a few seconds and reporting
never waits on the disk. A sink that fails (tensorboardX missing, a full
disk) logs one warning and goes quiet: TensorBoard is a view, never a reason
to fail a job.

`python -m runtime.jobs.tensorboard WORKSPACE` writes the event files of a
job from its metrics.jsonl after the fact (for a job run without the sink).
"""
from __future__ import annotations

import atexit
import logging
import math
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("singa.tensorboard")

DIR = "tensorboard"
FLUSH_S = 1.0
_META = frozenset({"time", "step", "phase", "group", "worker", "server"})
PHASES = ("train", "test", "validation")


def logdir(workspace: str | Path) -> Path:
    """Where a job's event files go (pass it to `tensorboard --logdir`)."""
    return Path(workspace) / DIR


def scalars(rec: dict[str, Any]) -> list[tuple[str, float, int]]:
    """The (tag, value, step) scalars of one metrics record (see the module docstring)."""
    phase = rec.get("phase")
    out = []
    if phase in PHASES:
        step = rec.get("step")
        if not isinstance(step, int):
            return []
        keys = [(k, v) for k, v in rec.items() if k not in _META]
        prefix = phase
    elif phase == "server":
        step = rec.get("updates")
        if not isinstance(step, int):
            return []
        keys = [(k, v) for k, v in rec.items() if k not in _META]
        prefix = "server" + str(rec.get("server", "0/0")).replace("/", ".")
    else:
        return []
    for k, v in keys:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append((f"{prefix}/{k}", float(v), int(step)))
    return out


def _summary_writer() -> Any:
    """tensorboardX's SummaryWriter, imported without PyTorch.

    tensorboardX imports PyTorch whenever it is installed (to accept its
    tensors), which costs the job master a second of CPU and hundreds of MB
    while it must answer heartbeats; it writes only scalars here. Hidden from
    the import, PyTorch is an optional module that is missing.
    """
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` -> ImportError
    try:
        from tensorboardX import SummaryWriter  # only once a record comes
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter


class TensorBoardSink:
    """A `MetricsWriter` sink (a callable taking one record) that writes
    TensorBoard event files under `<workspace>/tensorboard/group<G>/`.

    Writers are opened on the first record of each group, so a job that
    reports nothing leaves no empty event file. Call `close()` at the end
    (also done at interpreter exit).
    """

    def __init__(self, workspace: str | Path, flush_s: float = FLUSH_S):
        self.root = logdir(workspace)
        self.flush_s = flush_s
        self._writers: dict[int, Any] = {}
        self._flushed = time.monotonic()
        self._broken = False
        atexit.register(self.close)

    def _writer(self, group: int) -> Any:
        w = self._writers.get(group)
        if w is None:
            SummaryWriter = _summary_writer()
            run = self.root / f"group{group}"
            # private like the rest of the workspace: tensorboardX makes its folders
            # and event files with the process umask, so they are made 0700 first and
            # its files set 0600 once it has opened them
            for d in (self.root, run):
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(d, 0o700)
            # flush_secs bounds how long tensorboardX's own thread holds events;
            # we flush more often ourselves
            w = SummaryWriter(logdir=str(run), flush_secs=10)
            for f in run.iterdir():
                if f.is_file():
                    os.chmod(f, 0o600)
            self._writers[group] = w
        return w

    def __call__(self, rec: dict[str, Any]) -> None:
        if self._broken:
            return
        try:
            items = scalars(rec)
            if not items:
                return
            w = self._writer(int(rec.get("group", 0) or 0))
            wall = float(rec.get("time") or time.time())
            for tag, value, step in items:
                w.add_scalar(tag, value, step, walltime=wall)
            if time.monotonic() - self._flushed >= self.flush_s:
                self.flush()
        except ImportError:
            self._broken = True
            log.warning("TensorBoard event files are not written: tensorboardX is not "
                        "installed (pip install tensorboardX)")
        except Exception as e:  # noqa: BLE001 - a view must never fail the job
            self._broken = True
            log.warning("TensorBoard event files are not written any more: %s: %s",
                        type(e).__name__, e)

    def flush(self) -> None:
        self._flushed = time.monotonic()
        for w in self._writers.values():
            try:
                w.flush()
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        for w in self._writers.values():
            try:
                w.close()
            except Exception:  # noqa: BLE001
                pass
        self._writers.clear()


def export(workspace: str | Path, records: Iterable[dict[str, Any]] | None = None) -> Path:
    """Write the event files of a job's metrics stream (default: its
    metrics.jsonl) into `<workspace>/tensorboard/`; returns that folder."""
    from runtime.jobs import metrics

    sink = TensorBoardSink(workspace)
    try:
        for rec in (metrics.read(workspace) if records is None else records):
            sink(rec)
    finally:
        sink.close()
    return sink.root


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m runtime.jobs.tensorboard WORKSPACE", file=sys.stderr)
        return 2
    from runtime.jobs import metrics

    recs = metrics.read(args[0])
    if not recs:
        print(f"{args[0]}: no metrics.jsonl records to export", file=sys.stderr)
        return 2
    root = export(args[0], recs)
    print(f"{len(recs)} records -> {root} (tensorboard --logdir {root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
