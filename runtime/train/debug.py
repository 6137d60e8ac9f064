"""`debug: true` in a job.conf: per-layer norms at display steps, as SINGA does.

SINGA (reference §1, field 62) records, at display steps, each layer's
`ToString(debug=true)`: the mean absolute value (its `Asum`, the L1 norm over
the element count, so layers of any size compare) of the layer's output data
and of each param's values in the forward pass, and of the layer's gradient
and each param's gradient in the backward pass, and writes them as the net's
graph with these labels to `<workspace>/visualization/fp-step<N>-loc<W>.json`
and `bp-step<N>-loc<W>.json`. This module writes those two files (same
names; `-g<G>` is added for a worker group other than 0), and also appends
the numbers, one JSON record per layer, to
`<workspace>/visualization/norms-g<G>-loc<W>.jsonl`, which `read()` gathers
and `singa plot JOB --norms` draws:

    {"time": ..., "step": 10, "group": 0, "worker": 0, "layer": "ip1",
     "data": 0.41, "grad": 0.0031, "params": {"w1": {"data": 0.15, "grad": 0.002}}}

A key is absent when its array is (an input layer has no gradient).

How the worker uses it (two calls, when `job.debug`):
- `watch(train_net)` once after building the training net: the BP worker
  drops each layer's gradient (`layer.grad = None`) once it is propagated,
  so `watch` keeps a reference to it (no copy) as each layer's
  `compute_gradient` starts. Without `watch`, gradients are recorded only
  where a layer still holds one (the loss layers).
- `write(train_net, step, workspace, group=..., worker=...)` at each display
  step, after TrainOneBatch: what the last batch left in the net.
Norms cost one pass over each array at display steps only; `watch` adds a
dictionary store per layer per step.
"""
from __future__ import annotations

import json
import os
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np

VIS_DIR = "visualization"
NORMS_GLOB = "norms-g*-loc*.jsonl"

# net -> {layer name: the gradient array it received in the last backward pass}
_grads: weakref.WeakKeyDictionary[Any, dict[str, np.ndarray]] = weakref.WeakKeyDictionary()


def asum(a: np.ndarray | None) -> float | None:
    """SINGA's Asum: the mean absolute value of `a` (None for no array, 0 for an empty one)."""
    if a is None:
        return None
    a = np.asarray(a)
    if a.size == 0:
        return 0.0
    return float(np.abs(a).sum(dtype=np.float64) / a.size)


def watch(net) -> None:
    """Keep each layer's incoming gradient for `write` (see the module
    docstring). Idempotent; only the layers of `net` are touched."""
    if net in _grads:
        return
    seen: dict[str, np.ndarray] = {}
    _grads[net] = seen
    for layer in net.layers:
        if getattr(layer, "is_input", False):
            continue
        original = layer.compute_gradient

        def compute_gradient(flag, srclayers, _orig=original, _layer=layer):
            if _layer.grad is not None:
                seen[_layer.name] = _layer.grad
            return _orig(flag, srclayers)

        layer.compute_gradient = compute_gradient  # an instance attribute shadows the method


def _layer_grad(net, layer) -> np.ndarray | None:
    if layer.grad is not None:
        return layer.grad
    return _grads.get(net, {}).get(layer.name)


def _own_params(net, layer) -> list:
    """The layer's params, without the unrolled copies that only alias copy 0's."""
    head = getattr(net, "head", None)
    return [p for p in layer.params if head is None or head(p) is p]


def layer_norms(net) -> list[dict]:
    """One record per layer of `net` (topological order): `layer`, `data`,
    `grad` and `params` {name: {"data", "grad"}} as in the module docstring."""
    out = []
    for layer in net.layers:
        rec: dict[str, Any] = {"layer": layer.name}
        d = asum(layer.data)
        if d is not None:
            rec["data"] = d
        g = asum(_layer_grad(net, layer))
        if g is not None:
            rec["grad"] = g
        params = {}
        for p in _own_params(net, layer):
            pv = {}
            for key in ("data", "grad"):
                v = asum(getattr(p, key, None))
                if v is not None:
                    pv[key] = v
            if pv:
                params[p.name] = pv
        if params:
            rec["params"] = params
        out.append(rec)
    return out


def _fmt(r: dict, key: str) -> str:
    """A layer's label: its `key` norm ("data" or "grad") and its params'."""
    s = f"{r['layer']}  {key}:{r[key]:e}" if key in r else r["layer"]
    for name, pv in r.get("params", {}).items():
        if key in pv:
            s += f" {name}:{pv[key]:13.9f}"
    return s


def _graph_json(net, labels: dict[str, str]) -> dict:
    """SINGA's visualization JSON of the net, with a label per layer."""
    index = {l.name: i for i, l in enumerate(net.layers)}
    nodes = [{"id": l.name, "label": labels.get(l.name, l.name)} for l in net.layers]
    links = [{"source": index[s.name], "target": index[l.name]}
             for l in net.layers for s in net.srclayers(l) if s.name in index]
    return {"directed": 1, "nodes": nodes, "links": links}


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write(net, step: int, workspace: str | Path, *, group: int = 0, worker: int = 0) -> list[dict]:
    """Record the norms of `net` at `step` in `<workspace>/visualization/`
    (the fp/bp JSON files and the norms stream; see the module docstring).
    Returns the records appended to the stream. Raises OSError when the
    workspace cannot be written (as a checkpoint would)."""
    vis = Path(workspace) / VIS_DIR
    vis.mkdir(parents=True, exist_ok=True)
    recs = layer_norms(net)
    loc = f"loc{worker}" if group == 0 else f"g{group}-loc{worker}"
    by_layer = {r["layer"]: r for r in recs}
    _write_text(vis / f"fp-step{step}-{loc}.json", json.dumps(_graph_json(
        net, {n: _fmt(r, "data") for n, r in by_layer.items()})))
    _write_text(vis / f"bp-step{step}-{loc}.json", json.dumps(_graph_json(
        net, {n: _fmt(r, "grad") for n, r in by_layer.items()})))
    now = round(time.time(), 3)
    out = [{"time": now, "step": int(step), "group": int(group), "worker": int(worker), **r}
           for r in recs]
    # one write per display step, to a file of this worker only: never interleaved
    with open(vis / f"norms-g{group}-loc{worker}.jsonl", "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in out))
    return out


def read(workspace: str | Path) -> list[dict]:
    """Every norms record of a job's workspace, by time (torn lines skipped)."""
    out = []
    for path in sorted((Path(workspace) / VIS_DIR).glob(NORMS_GLOB)):
        try:
            with open(path) as f:
                for line in f:
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue
        except OSError:
            continue
    out.sort(key=lambda r: (r.get("time", 0), r.get("group", 0), r.get("worker", 0)))
    return out
