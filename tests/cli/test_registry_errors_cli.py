"""A broken job registry, as every verb meets it: a truncated, foreign or damaged
`jobs.db`, an undecodable row, a read-only $SINGA_HOME, a $SINGA_HOME that
cannot be created. Each verb ends with one line naming the file, what is wrong
and what to do, exit code 2, no traceback, and nothing started."""
from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.jobs import jobdb
from tests.test_training import make_conf

ROOT = Path(__file__).resolve().parents[2]

VERBS = {
    "list": ["list", "--all"],
    "view": ["view", "1"],
    "log": ["log", "1"],
    "log -f": ["log", "1", "-f"],
    "kill": ["kill", "1"],
    "top": ["top", "1", "--once"],
    "plot": ["plot", "1"],
    "draw": ["draw", "net", "1", "-o", "net.png"],
    "submit": ["submit", "--detach", "CONF"],
}


def singa(home: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, SINGA_HOME=str(home), OPENBLAS_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "singa_cli.main", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def healthy(home: Path) -> bytes:
    """A registry with job 1 (PENDING) and two more; its bytes, WAL checkpointed."""
    with jobdb.JobDB(home) as reg:
        for i in range(3):
            reg.create_job(name=f"j{i}", conf_path="/c/job.conf", conf_text="x" * 3000,
                           workspace=f"/nowhere/ws{i}", launcher="local", hosts=["localhost"],
                           nprocs=1, train_steps=5)
    return (home / "jobs.db").read_bytes()


def _file(home: Path, content: bytes) -> None:
    for extra in ("jobs.db-wal", "jobs.db-shm"):
        (home / extra).unlink(missing_ok=True)
    (home / "jobs.db").write_bytes(content)


def _cell(home: Path, sql: str) -> None:
    db = sqlite3.connect(home / "jobs.db")
    db.execute(sql)
    db.commit()
    db.close()


def broken(kind: str, tmp: Path) -> tuple[Path, str]:
    """A $SINGA_HOME broken in the way `kind` says, and the path the error must name."""
    home = tmp / "home"
    if kind == "uncreatable":
        (tmp / "afile").write_text("not a directory")
        return tmp / "afile" / "home", str(tmp / "afile" / "home")
    good = healthy(home)
    rnd = random.Random(kind)
    if kind == "truncated":
        _file(home, good[:len(good) // 2])
    elif kind == "foreign":
        _file(home, bytes(rnd.randrange(256) for _ in range(5000)))
    elif kind == "malformed":  # a valid header, the pages after the first overwritten
        _file(home, good[:4096] + bytes(rnd.randrange(256) for _ in range(len(good) - 4096)))
    elif kind == "bad-utf8":  # a text value that is not UTF-8, in job 1 (active)
        _cell(home, "UPDATE jobs SET workspace = CAST(x'2f77ff' AS TEXT) WHERE id = 1")
    elif kind == "bad-json":
        _cell(home, "UPDATE jobs SET hosts = '[\"local' WHERE id = 1")
    elif kind == "read-only":
        return home, str(home / "jobs.db")
    return home, str(home / "jobs.db")


@pytest.fixture
def read_only(tmp_path):
    """`tmp/home` made read-only with a read-only bind mount (root only)."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root (and chmod does not stop root)")
    src = tmp_path / "src"
    healthy(src)
    home = tmp_path / "home"
    home.mkdir()
    if subprocess.run(["mount", "--bind", str(src), str(home)]).returncode or subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(home)]).returncode:
        subprocess.run(["umount", "-l", str(home)])
        pytest.skip("cannot make a read-only bind mount here")
    yield home
    subprocess.run(["umount", "-l", str(home)])


WHAT = {
    "truncated": "the job registry is damaged",
    "foreign": "not a singa job registry",
    "malformed": "the job registry is damaged",
    "bad-utf8": "a row of the job registry cannot be read",
    "bad-json": "job 1 has an undecodable 'hosts' value",
    "read-only": "cannot write the job registry",
    "uncreatable": "cannot create or use the singa home directory: a file is in the way",
}
DO = {
    "truncated": "move the singa home aside", "foreign": "move the singa home aside",
    "malformed": "move the singa home aside", "bad-utf8": "move the singa home aside",
    "bad-json": "move the singa home aside", "read-only": "writable, or point SINGA_HOME at",
    "uncreatable": "point SINGA_HOME at a directory you can create and write",
}


@pytest.mark.parametrize("kind", list(WHAT))
def test_every_verb_says_what_is_wrong_with_the_registry_in_one_line(kind, tmp_path, request):
    if kind == "read-only":
        home = request.getfixturevalue("read_only")
        named = str(home / "jobs.db")
    else:
        home, named = broken(kind, tmp_path)
    conf = make_conf(tmp_path, "job.conf", steps=5, workspace=str(tmp_path / "ws"))
    for verb, args in VERBS.items():
        if kind == "bad-json" and verb == "submit":
            continue  # a submit reads no other job's JSON: it may run (tested below)
        r = singa(home, [str(conf) if a == "CONF" else a for a in args], cwd=tmp_path)
        where = f"{kind}: singa {' '.join(args)}"
        assert r.returncode == 2, (where, r.returncode, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and r.stdout == "", (where, r.stdout, r.stderr)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"singa: {named}: "), (where, r.stderr)
        assert WHAT[kind] in lines[0] and DO[kind] in lines[0], (where, lines[0])
    # nothing started: submit made no workspace, no job folder, no new row
    assert not (tmp_path / "ws").exists()
    if kind in ("bad-utf8", "bad-json", "read-only"):
        assert sorted(p.name for p in (home / "jobs").iterdir()) == ["1", "2", "3"]


def test_a_submit_beside_an_undecodable_row_of_another_job_still_runs(tmp_path):
    home, _ = broken("bad-json", tmp_path)
    conf = make_conf(tmp_path, "job.conf", steps=5, workspace=str(tmp_path / "ws"))
    r = singa(home, ["submit", str(conf)], cwd=tmp_path)
    assert r.returncode == 0 and "job 4 SUCCEEDED" in r.stderr, r.stderr
