"""What the dashboard's buttons do: kill, resume, resubmit.

- `kill(home, job_id)`: `runtime.jobs.kill.kill_job`, as `singa kill` does,
  in a thread of its own (it waits out the grace period); the answer comes
  once the job is marked KILLED, which is the first thing kill_job does.
- `resubmit(home, job, resume)`: the job's conf submitted again, as
  `singa submit --detach [--resume]` would from the directory it was
  submitted from (relative paths resolve as they did), with its name,
  priority, cores, hosts, user code and, for a sweep's job, its point and
  workspace. It runs in a subprocess (`python -m runtime.ui.actions`,
  which calls `runtime.jobs.submit.submit`), so that the server never
  changes its own working directory or imports a user's modules. Returns
  the new job's id; a refusal (a bad conf, `--resume` without a checkpoint,
  a workspace in use) is a UserError with submit's own message.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from runtime.errors import UserError
from runtime.jobs import jobdb

SUBMIT_TIMEOUT_S = 120.0


def kill(home: Path, job_id: int, grace: float = 10.0) -> str:
    """Start killing the job; returns its state once kill_job has marked it."""
    from runtime.jobs.kill import kill_job

    with jobdb.JobDB(home) as reg:
        job = reg.job(job_id)
        if job.terminal:
            raise UserError(f"job {job_id} has already ended ({job.state})")
    errors: list[str] = []

    def run() -> None:
        try:
            with jobdb.JobDB(home) as reg:
                errors.extend(kill_job(reg, job_id, grace=grace,
                                       reason="killed from the dashboard (singa ui)"))
        except Exception as e:  # noqa: BLE001 - reported in the server's log, not lost
            print(f"singa ui: killing job {job_id} failed: {e}", file=sys.stderr)

    threading.Thread(target=run, name=f"kill-{job_id}", daemon=True).start()
    with jobdb.JobDB(home) as reg:
        for _ in range(50):  # kill_job's first step is the transition: well under 5 s
            state = reg.job(job_id).state
            if state in jobdb.TERMINAL:
                return state
            threading.Event().wait(0.1)
        return reg.job(job_id).state


def _spec(job: jobdb.Job, resume: bool) -> dict[str, Any]:
    """The SubmitOptions (as JSON) and the conf of a resubmission of `job`."""
    if not job.conf_text:
        raise UserError(f"job {job.id} has no conf text in the registry; submit its conf again "
                        "with singa submit")
    conf = job.conf_path
    if not conf or not os.path.isfile(conf) or _text(conf) != job.conf_text:
        # the conf changed or moved since: the text the job ran with, kept beside its logs
        conf = str(Path(job.log_dir) / "resubmit.conf")
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w") as f:
            f.write(job.conf_text)
    code = Path(job.log_dir) / "code"
    loads = list(job.options.get("modules") or ())
    modules = [str(code / m) if m.endswith(".py") else m for m in loads]
    threads = {d.get("threads") for d in job.demand.values() if isinstance(d, dict)}
    opts: dict[str, Any] = {
        "name": job.name, "resume": resume, "max_restarts": job.max_restarts,
        "priority": job.priority, "modules": modules, "grace": job.options.get("grace", 5.0),
        "launcher": job.launcher if job.launcher not in (None, "local") else None,
        "interface": job.options.get("interface"),
        "overrides": [list(s) for s in job.settings.items()],
    }
    ssh = job.options.get("ssh") or {}
    opts.update({f"ssh_{k}": v for k, v in ssh.items() if k in ("port", "identity", "config")})
    if len(threads) == 1 and isinstance(next(iter(threads)), int):
        opts["cores"] = next(iter(threads))
    if job.launcher not in ("slurm", "mpi") and job.hosts and any(h != "localhost" for h in job.hosts):
        opts["hosts"] = ",".join(f"{h}:{n}" for h, n in Counter(job.hosts).items())
    if job.array_id is not None and job.workspace:
        opts["workspace"] = job.workspace  # a sweep's job works in its own
    return {"conf": conf, "opts": opts, "code_dir": str(code) if code.is_dir() else None}


def _text(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None


def resubmit(home: Path, job: jobdb.Job, resume: bool) -> int:
    """Submit `job`'s conf again (from its latest checkpoint with `resume`);
    the new job's id."""
    if not job.terminal:
        raise UserError(f"job {job.id} is {job.state}; kill it first, or wait for it to end")
    spec = _spec(job, resume)
    cwd = job.options.get("cwd")
    root = str(Path(__file__).resolve().parents[2])
    path = [root, *filter(None, [spec["code_dir"], os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, SINGA_HOME=str(home), PYTHONPATH=os.pathsep.join(path))
    try:
        r = subprocess.run([sys.executable, "-m", "runtime.ui.actions", json.dumps(spec)],
                           capture_output=True, text=True, timeout=SUBMIT_TIMEOUT_S, env=env,
                           cwd=cwd if cwd and os.path.isdir(cwd) else None)
    except subprocess.TimeoutExpired:
        raise UserError(f"submitting job {job.id} again took more than "
                        f"{SUBMIT_TIMEOUT_S:.0f} s") from None
    last = (r.stdout.strip().splitlines() or [""])[-1]
    if r.returncode != 0 or not last.isdigit():
        msg = r.stderr.strip().splitlines()
        raise UserError(msg[-1].removeprefix("singa: ") if msg else
                        f"submitting job {job.id} again failed (exit {r.returncode})")
    return int(last)


def main(argv: list[str]) -> int:
    """The child of `resubmit`: submit the conf with the options given as JSON."""
    from runtime.jobs.submit import SubmitOptions, submit

    spec = json.loads(argv[0])
    o = dict(spec["opts"])
    o["modules"] = tuple(o.get("modules") or ())
    o["overrides"] = tuple(tuple(s) for s in o.get("overrides") or ())
    try:
        job_id = submit(spec["conf"], SubmitOptions(**o))
    except UserError as e:
        print(f"singa: {e}", file=sys.stderr)
        return 2
    print(job_id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
