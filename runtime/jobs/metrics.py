"""The metrics stream of a job: `<workspace>/metrics.jsonl`, one JSON object
a line, written by the job master from what every process reports.

Records (all have `time`, seconds since the epoch, and `phase`):

- `train`, `test`, `validation`: from the first worker of each group at
  its display/test steps: `step`, `group`, `worker`, the metrics of the
  net's loss layers (`loss`, `accuracy`, ...), the learning rate `lr` at
  that step, and for `train` the group's `samples_per_s` since its last
  train record;
- `server`: from each server every few seconds and at the end: `group`
  (the worker group whose updates it counts), `server` ("g/s"), `updates`,
  `staleness_mean`, `staleness_max` (versions between the params a
  gradient was computed on and the ones it was applied to).

The file is 0600, like every file of the workspace. Writes are buffered and flushed at most once a
second, so reporting never slows training; `close()` flushes the rest. Other writers (TensorBoard) can
subscribe with `add_sink`.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FLUSH_S = 1.0
FILE = "metrics.jsonl"


class MetricsWriter:
    def __init__(self, workspace: str | Path, samples_per_step: int = 0):
        self.path = Path(workspace) / FILE
        self.samples_per_step = samples_per_step  # of one worker group
        self._buf: list[str] = []
        self._flushed = time.monotonic()
        self._last_train: dict[int, tuple[float, int]] = {}
        self._sinks: list[Callable[[dict[str, Any]], None]] = []

    def add_sink(self, sink: Callable[[dict[str, Any]], None]) -> None:
        self._sinks.append(sink)

    def add(self, rec: dict[str, Any]) -> dict[str, Any]:
        # the reporter's own clock when it stamped the record (it may be sent late)
        rec = {"time": round(time.time(), 3), **rec}
        if rec.get("phase") == "train" and self.samples_per_step:
            g, step = int(rec.get("group", 0)), int(rec.get("step", 0))
            last = self._last_train.get(g)
            if last is not None and step > last[1] and rec["time"] > last[0]:
                rec["samples_per_s"] = round((step - last[1]) * self.samples_per_step
                                             / (rec["time"] - last[0]), 1)
            self._last_train[g] = (rec["time"], step)
        self._buf.append(json.dumps(rec))
        for sink in self._sinks:
            sink(rec)
        if time.monotonic() - self._flushed >= FLUSH_S:
            self.flush()
        return rec

    def flush(self) -> None:
        self._flushed = time.monotonic()
        if not self._buf:
            return
        try:
            # private like the rest of the workspace (0600), whatever the umask
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with open(fd, "a") as f:
                if os.fstat(fd).st_mode & 0o077:
                    os.fchmod(fd, 0o600)  # a file an older singa made 0644
                f.write("\n".join(self._buf) + "\n")
        except OSError:
            return  # a full disk fails the job elsewhere; metrics are not worth a crash
        self._buf.clear()

    def close(self) -> None:
        self.flush()


def read(workspace: str | Path) -> list[dict[str, Any]]:
    """Every record of a job's metrics stream (a torn last line is skipped)."""
    out = []
    try:
        with open(Path(workspace) / FILE) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        pass
    return out
