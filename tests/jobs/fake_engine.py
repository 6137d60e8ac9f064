"""Stand-ins for Slurm (sbatch, srun, squeue, sacct, scancel), for tests on
a machine without it: they run every task on this host, but set the same
environment the real tools set (SLURM_PROCID, SLURM_NTASKS, SLURM_JOB_ID)
and keep the same command-line contract singa relies on. State (job ids, pids, exit codes)
lives in $FAKE_ENGINE_DIR.

    python fake_engine.py TOOL ARGS...
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ.get("FAKE_ENGINE_DIR", "/tmp/fake-engine"))


def run_tasks(n: int, argv: list[str], env_of) -> int:
    """Start n copies, forward TERM, kill the rest when one fails; exit like srun."""
    procs = [subprocess.Popen(argv, env=dict(os.environ, **env_of(i))) for i in range(n)]

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    code = 0
    while any(p.poll() is None for p in procs):
        bad = [p.returncode for p in procs if p.returncode not in (None, 0)]
        if bad and code == 0:
            code = bad[0] if bad[0] > 0 else 128 - bad[0]
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.05)
    if code == 0:
        bad = [p.returncode for p in procs if p.returncode != 0]
        code = (bad[0] if bad[0] > 0 else 128 - bad[0]) if bad else 0
    return code


def sbatch(args: list[str]) -> int:
    script = Path(args[-1])
    text = script.read_text()
    ntasks = int(re.search(r"^#SBATCH --ntasks=(\d+)", text, re.M).group(1))
    STATE.mkdir(parents=True, exist_ok=True)
    jid = str(len(list(STATE.glob("*.job"))) + 1001)
    (STATE / f"{jid}.job").write_text(str(script))
    out = re.search(r"^#SBATCH --output=(\S+)", text, re.M).group(1).replace("%j", jid)
    env = dict(os.environ, SLURM_JOB_ID=jid, SLURM_NTASKS=str(ntasks), SLURM_NPROCS=str(ntasks),
               SLURM_JOB_NODELIST="localhost", SLURM_TASKS_PER_NODE=str(ntasks))
    with open(out, "ab") as f:
        p = subprocess.Popen(["sh", "-c", f'sh "$0"; echo $? > "{STATE}/{jid}.exit"', str(script)],
                             stdout=f, stderr=f, env=env, start_new_session=True)
    (STATE / f"{jid}.pid").write_text(str(p.pid))
    print(jid if "--parsable" in args else f"Submitted batch job {jid}")
    return 0


def srun(args: list[str]) -> int:
    argv = [a for a in args if not a.startswith("--kill-on-bad-exit")]
    n = int(os.environ["SLURM_NTASKS"])
    return run_tasks(n, argv, lambda i: {"SLURM_PROCID": str(i), "SLURM_LOCALID": str(i),
                                         "PMI_RANK": str(i), "PMI_SIZE": str(n)})


def _running(jid: str) -> bool:
    if (STATE / f"{jid}.exit").exists() or not (STATE / f"{jid}.pid").exists():
        return False
    try:
        os.kill(int((STATE / f"{jid}.pid").read_text()), 0)
        return True
    except ProcessLookupError:
        return False


def squeue(args: list[str]) -> int:
    jid = args[args.index("-j") + 1]
    if _running(jid):
        print("RUNNING")
    return 0


def sacct(args: list[str]) -> int:
    jid = args[args.index("-j") + 1]
    exit_file = STATE / f"{jid}.exit"
    code = int(exit_file.read_text() or 1) if exit_file.exists() else 0
    print(f"{code}:0")
    return 0


def scancel(args: list[str]) -> int:
    jid = args[-1]
    if not (STATE / f"{jid}.pid").exists():
        print(f"scancel: error: Invalid job id {jid}", file=sys.stderr)
        return 1
    pid = int((STATE / f"{jid}.pid").read_text())
    sig = getattr(signal, "SIG" + args[args.index("--signal") + 1]) if "--signal" in args else None
    try:
        os.killpg(pid, sig or signal.SIGTERM)
        if sig is None:  # like Slurm's KillWait: TERM, then KILL
            time.sleep(1)
            os.killpg(pid, signal.SIGKILL)
            (STATE / f"{jid}.exit").write_text("143")
    except ProcessLookupError:
        pass
    return 0


TOOLS = {f.__name__: f for f in (sbatch, srun, squeue, sacct, scancel)}

if __name__ == "__main__":
    sys.exit(TOOLS[sys.argv[1]](sys.argv[2:]))
