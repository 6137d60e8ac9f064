"""validate's summary of a job and its partitioned net as SVG, for the job page.

Run as `python -m runtime.ui.describe_job` with a JSON request on stdin
(`conf_text`, `conf_path`, `settings`, `modules`, `code_dir`) from the
job's own working directory, so that relative paths resolve as they did at
submit time; prints one JSON object: `text` (what `singa validate` prints,
`runtime.config.describe.render`), `svg` (the training net, partitioned
over the workers of a group, drawn by Graphviz dot as `singa validate
--graph` draws it) and `error` (why either is missing). In a subprocess so
that the server never imports numpy, protobuf or a user's modules, and a
conf that takes long to build cannot stall it.

`summarize(job)` (in the server) runs it, caching each job's answer.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from runtime.jobs import jobdb

TIMEOUT_S = 120.0
#: answers kept (the oldest goes first): a summary and an SVG are tens of kB each
CACHE_SIZE = 256
_cache: dict[tuple[int, str], dict[str, Any]] = {}
_lock = threading.Lock()


def summarize(job: jobdb.Job) -> dict[str, Any]:
    """The job's summary and net picture (`text`, `svg`, `error`), made once per job."""
    key = (job.id, job.conf_hash or "")
    with _lock:  # one subprocess at a time; a second asker waits for the first's answer
        if key in _cache:
            return _cache[key]
        _cache[key] = out = _run(job)
        while len(_cache) > CACHE_SIZE:
            del _cache[next(iter(_cache))]
        return out


def _run(job: jobdb.Job) -> dict[str, Any]:
    if not job.conf_text:
        return {"text": "", "svg": None, "error": "the registry has no conf text for this job"}
    cwd = job.options.get("cwd")
    code = Path(job.log_dir) / "code" if job.log_dir else None
    req = {"conf_text": job.conf_text, "conf_path": job.conf_path or "job.conf",
           "settings": list(job.settings.items()),
           "modules": list(job.options.get("modules") or ()),
           "code_dir": str(code) if code is not None and code.is_dir() else None}
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    try:
        r = subprocess.run([sys.executable, "-m", "runtime.ui.describe_job"], input=json.dumps(req),
                           capture_output=True, text=True, timeout=TIMEOUT_S, env=env,
                           cwd=cwd if cwd and os.path.isdir(cwd) else None)
    except subprocess.TimeoutExpired:
        return {"text": "", "svg": None, "error": f"describing the job took more than {TIMEOUT_S:.0f} s"}
    try:
        out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"text": "", "svg": None,
                "error": f"describing the job failed (exit {r.returncode}): {r.stderr.strip()[-800:]}"}
    return out


def main() -> None:
    req = json.loads(sys.stdin.read())
    out: dict[str, Any] = {"text": "", "svg": None, "error": None}
    try:
        out.update(_describe(req))
    except Exception as e:  # noqa: BLE001 - the page shows why, the server goes on
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out))


def _describe(req: dict[str, Any]) -> dict[str, Any]:
    from conf import job_pb2
    from runtime import plugins
    from runtime.config import load_text
    from runtime.config.describe import describe, render
    from runtime.errors import ConfigError
    from runtime.jobs import code
    from runtime.viz import graph

    if req.get("code_dir"):
        where = Path(req["code_dir"])
        sys.path.insert(0, str(where))
        plugins.load(code.modules_to_load(req.get("modules") or [], where))
    try:
        job = load_text(req["conf_text"], req["conf_path"],
                        overrides=[tuple(s) for s in req.get("settings") or ()])
    except ConfigError as e:
        return {"text": "\n".join(str(p) for p in e.problems), "error": "the conf no longer validates"}
    out: dict[str, Any] = {"text": render(describe(job))}
    net = getattr(job.validation, "partitioned", None) or job.nets.get(job_pb2.kTrain) \
        or next(iter(job.nets.values()), None)
    if net is None:
        out["error"] = "no net could be built to draw"
        return out
    phase = {job_pb2.kTrain: "train", job_pb2.kTest: "test"}.get(net.phase, "validation")
    g = graph.graph_of(net, job.proto.name or "job", phase,
                       {layer.name for layer in job.proto.neuralnet.layer})
    try:
        # dot's own SVG at 72 dpi: `graph.render` sets -Gdpi=96 (for PNG), which leaves an
        # SVG whose viewBox does not match its size (browsers clip it)
        r = subprocess.run([graph.dot_binary(), "-Tsvg"], input=graph.to_dot(g), capture_output=True,
                           text=True, timeout=graph.DOT_TIMEOUT_S)
        if r.returncode != 0:
            raise RuntimeError(f"dot exited {r.returncode}: {r.stderr.strip()[:300]}")
        out["svg"] = r.stdout
    except Exception as e:  # noqa: BLE001 - no Graphviz: the summary still shows
        out["error"] = f"the net could not be drawn: {e}"
    return out


if __name__ == "__main__":
    main()
