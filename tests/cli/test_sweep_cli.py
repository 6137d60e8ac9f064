"""`singa sweep` as a user runs it: real subprocesses, real jobs (examples/mnist's
MLP made tiny: a few steps, narrow layers, one core each) on a registry of the
test's own, and `singa sweep show` / `singa list` on what they did."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conf import job_pb2
from runtime.config import override, parse_text
from runtime.jobs import jobdb, metrics
from runtime.jobs import sweep as sweeps

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "mnist"
LR = "updater.learning_rate.base_lr"
FC1 = "neuralnet.layer[fc1].innerproduct_conf.num_output"


@pytest.fixture
def home(tmp_path):
    """A registry of the test's own; any job still active at the end is stopped."""
    path = tmp_path / "singa-home"
    yield path
    if (path / "jobs.db").exists():
        from runtime.jobs.kill import kill_job

        with jobdb.JobDB(path) as reg:
            for j in reg.jobs(jobdb.ACTIVE):
                kill_job(reg, j.id, grace=1.0, reason="left running by the test")


@pytest.fixture
def mlp(tmp_path) -> Path:
    """examples/mnist/job.conf, tiny: 30 steps, a test at the end, narrow layers,
    absolute data paths, its workspace in tmp_path."""
    if not (DATA / "train_data.bin").exists():
        pytest.skip("Fashion-MNIST is not imported: run bin/setup (singa data fetch)")
    text = (DATA / "job.conf").read_text()
    for field, value in (("train_steps", 30), ("test_steps", 3), ("test_freq", 30),
                         ("disp_freq", 10)):
        text = re.sub(rf"^{field}: \d+", f"{field}: {value}", text, flags=re.M)
    text = re.sub(r"^num_openblas_threads: \d+\n", "", text, flags=re.M)
    for wide, narrow in (("2500", "64"), ("2000", "48"), ("1500", "32"), ("1000", "32"),
                         ("500", "16")):
        text = text.replace(f"num_output: {wide}\n", f"num_output: {narrow}\n")
    for f in ("train_data.bin", "test_data.bin"):
        text = text.replace(f'path: "{f}"', f'path: "{DATA / f}"')
    text = text.replace('workspace: "examples/mnist/workspace"', f'workspace: "{tmp_path}/ws"')
    p = tmp_path / "mlp.conf"
    p.write_text(text)
    return p


def singa(home: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, SINGA_HOME=str(home))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "singa_cli.main", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def submitted(r: subprocess.CompletedProcess) -> tuple[int, list[int]]:
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"^Submitted array (\d+): (\d+) jobs \(ids (\d+)-(\d+)\)$", r.stdout, re.M)
    assert m, r.stdout
    ids = list(range(int(m.group(3)), int(m.group(4)) + 1))
    assert len(ids) == int(m.group(2))
    return int(m.group(1)), ids


def all_ended(home: Path, ids: list[int], timeout: float = 120) -> list[jobdb.Job]:
    deadline = time.monotonic() + timeout
    with jobdb.JobDB(home) as reg:
        while True:
            jobs = [reg.reconcile(reg.job(i)) for i in ids]
            if all(j.terminal for j in jobs):
                return jobs
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for jobs {ids} to "
                                     f"end: {[(j.id, j.state) for j in jobs]}")
            time.sleep(0.2)


def job_pb(job: jobdb.Job) -> job_pb2.JobProto:
    out = job_pb2.JobProto()
    out.ParseFromString((Path(job.log_dir) / "job.pb").read_bytes())
    return out


def fc1_outputs(job: job_pb2.JobProto) -> int:
    return next(l.innerproduct_conf.num_output for l in job.neuralnet.layer if l.name == "fc1")


def test_a_grid_is_one_array_of_jobs_listed_under_it_and_shown_best_first(home, mlp, tmp_path):
    r = singa(home, "sweep", str(mlp), "--set", f"{LR}=0.1,0.01", "--set", f"{FC1}=24,40",
              "--cores", "1", cwd=tmp_path)
    array_id, ids = submitted(r)
    assert len(ids) == 4 and f"singa sweep show {array_id}" in r.stderr
    want = [{LR: lr, FC1: n} for lr in ("0.1", "0.01") for n in ("24", "40")]
    with jobdb.JobDB(home) as reg:
        array = reg.array(array_id)
        jobs = reg.array_jobs(array_id)
    assert array["name"] == "mlp" and array["conf_path"] == str(mlp)
    assert array["spec"]["settings"] == [[LR, ["0.1", "0.01"]], [FC1, ["24", "40"]]]
    assert [j.id for j in jobs] == ids and [j.array_index for j in jobs] == [0, 1, 2, 3]
    assert [j.name for j in jobs] == [f"mlp[{i}]" for i in range(4)]
    assert [j.settings for j in jobs] == want
    assert [j.workspace for j in jobs] == [f"{tmp_path}/ws/array{array_id}-{i}" for i in range(4)]
    for j, point in zip(jobs, want):  # what each job's processes run
        pb = job_pb(j)
        assert pb.updater.learning_rate.base_lr == pytest.approx(float(point[LR]))
        assert fc1_outputs(pb) == int(point[FC1])
        assert pb.cluster.workspace == j.workspace

    lst = singa(home, "list", "--all", cwd=tmp_path)
    assert lst.returncode == 0, lst.stderr
    lines = lst.stdout.splitlines()
    head = next(k for k, line in enumerate(lines) if line.startswith(f"array {array_id}: mlp "))
    assert re.fullmatch(rf"array {array_id}: mlp \(4 jobs: .+\)", lines[head])
    assert [line.split()[:2] for line in lines[head + 1:head + 5]] == \
        [[str(i), f"mlp[{k}]"] for k, i in enumerate(ids)]

    ended = all_ended(home, ids)
    assert [j.state for j in ended] == [jobdb.SUCCEEDED] * 4, [(j.id, j.reason) for j in ended]
    flat = json.loads(singa(home, "list", "--all", "--json", cwd=tmp_path).stdout)
    assert [(d["id"], d["array_id"], d["array_index"]) for d in flat] == \
        [(i, array_id, k) for k, i in enumerate(ids)]
    lst = singa(home, "list", "--all", cwd=tmp_path).stdout
    assert f"array {array_id}: mlp (4 jobs: 4 SUCCEEDED)" in lst

    r = singa(home, "sweep", "show", str(array_id), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    head = next(k for k, line in enumerate(lines) if line.startswith("INDEX"))
    assert lines[head].split() == ["INDEX", "JOB", "ID", "STATE", "base_lr", "fc1.num_output",
                                   "TEST", "ACCURACY", "TEST", "LOSS", "ELAPSED"]
    rows = [line.split() for line in lines[head + 1:head + 5]]
    # each job's last test record, from its own metrics stream
    final = {}
    for j in ended:
        test = [m for m in metrics.read(j.workspace) if m["phase"] == "test"]
        assert test and test[-1]["step"] == 30
        final[j.array_index] = (test[-1]["accuracy"], test[-1]["loss"])
    order = sorted(final, key=lambda i: (-final[i][0], final[i][1], i))
    assert [int(row[0]) for row in rows] == order
    for row in rows:
        i = int(row[0])
        assert row[1:5] == [str(ids[i]), "SUCCEEDED", want[i][LR], want[i][FC1]]
        assert float(row[5]) == pytest.approx(final[i][0], abs=1e-4)
        assert float(row[6]) == pytest.approx(final[i][1], abs=1e-4)
    best = order[0]
    out = tmp_path / "mlp-best.conf"
    assert f"Best: job {ids[best]} (mlp[{best}])" in r.stdout and f"Wrote its conf to {out}" \
        in r.stdout
    pb, _ = parse_text(out.read_text(), str(out))
    assert pb.updater.learning_rate.base_lr == pytest.approx(float(want[best][LR]))
    assert fc1_outputs(pb) == int(want[best][FC1])
    assert pb.cluster.workspace == f"{tmp_path}/ws"  # the conf's own, not the job's

    r = singa(home, "sweep", "show", str(array_id), "--by", "loss", "--out", "by-loss.conf",
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    by_loss = min(final, key=lambda i: (final[i][1], -final[i][0], i))
    assert f"Best: job {ids[by_loss]} " in r.stdout and (tmp_path / "by-loss.conf").exists()


def test_random_draws_the_seeded_points_and_names_jobs_after_name(home, mlp, tmp_path):
    r = singa(home, "sweep", str(mlp), "--set", f"{LR}=0.3,0.1,0.03,0.01", "--random", "2",
              "--seed", "1", "--cores", "1", "--name", "rnd", cwd=tmp_path)
    array_id, ids = submitted(r)
    assert len(ids) == 2
    drawn = override.sample([override.parse_set(f"{LR}=0.3,0.1,0.03,0.01", "x")], 2, 1)
    with jobdb.JobDB(home) as reg:
        spec = reg.array(array_id)["spec"]
        jobs = reg.array_jobs(array_id)
    assert spec["random"] == 2 and spec["seed"] == 1 and spec["points"] == 2
    assert [j.settings for j in jobs] == drawn
    assert [j.name for j in jobs] == ["rnd[0]", "rnd[1]"]
    all_ended(home, ids)


def test_a_bad_setting_or_point_is_exit_2_and_nothing_is_created(home, mlp, tmp_path):
    r = singa(home, "sweep", str(mlp), "--set", "updater.learning_rate.base_rl=0.1,0.01",
              "--set", f"{FC1}=32,x", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--set #1: updater.learning_rate.base_rl: updater.learning_rate has no field " \
           "'base_rl'; did you mean 'base_lr'?" in r.stderr
    assert f"--set #2: {FC1}: expected an integer (int32), got 'x'" in r.stderr
    r = singa(home, "sweep", str(mlp), "--set", "neuralnet.layer[fc7].innerproduct_conf."
              "num_output=8", cwd=tmp_path)
    assert r.returncode == 2 and "no layer named 'fc7'; did you mean 'fc6'" in r.stderr
    # valid values that the job's rules refuse: every point is validated first
    r = singa(home, "sweep", str(mlp), "--set", f"{LR}=0.1,0.01", "--set", f"{FC1}=32,0",
              cwd=tmp_path)
    assert r.returncode == 2
    assert "2 of the sweep's 4 points do not validate; nothing was submitted" in r.stderr
    assert "point 1 (base_lr=0.1 fc1.num_output=0)" in r.stderr and "point 3 " in r.stderr
    assert "num_output must be > 0, got 0" in r.stderr
    with jobdb.JobDB(home) as reg:
        assert reg.jobs() == []
        with pytest.raises(Exception, match="no job array 1"):
            reg.array(1)
    assert not (tmp_path / "ws").exists()


def test_a_job_that_cannot_be_submitted_withdraws_the_array(home, mlp, tmp_path):
    # point 1 needs two processes; the single slot given holds one: found only at its submit
    r = singa(home, "sweep", str(mlp), "--set", "cluster.nworker_groups=1,2", "--set",
              "cluster.nworkers_per_procs=1", "--hosts", "localhost:1", "--cores", "1",
              "--grace", "1", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "job 1 of the sweep's 2 could not be submitted: the job needs 2 processes" in r.stderr
    m = re.search(r"array (\d+) is withdrawn: its 1 job\(s\) already submitted \(id (\d+)\) "
                  r"were killed", r.stderr)
    assert m, r.stderr
    with jobdb.JobDB(home) as reg:
        (job,) = reg.array_jobs(int(m.group(1)))
        assert job.id == int(m.group(2)) and job.state == jobdb.KILLED
        assert "could not be submitted" in job.reason
    show = singa(home, "sweep", "show", m.group(1), cwd=tmp_path)
    assert show.returncode == 1, show.stdout + show.stderr
    assert "KILLED" in show.stdout and "No best job" in show.stdout
    assert not (tmp_path / "mlp-best.conf").exists()
    r = singa(home, "sweep", "show", "99", cwd=tmp_path)
    assert r.returncode == 2 and "no job array 99" in r.stderr and "singa list --all" in r.stderr


def test_ranked_puts_succeeded_jobs_first_by_test_metrics_then_reported_then_the_rest(tmp_path):
    with jobdb.JobDB(tmp_path / "home") as reg:
        array_id = reg.create_array("a", None, {})

        def job(i: int, state: str, test: tuple[float, float] | None = None,
                reported: tuple[float, float] | None = None) -> jobdb.Job:
            ws = tmp_path / f"ws{i}"
            ws.mkdir()
            j = reg.create_job(name=f"a[{i}]", conf_path=None, conf_text="", workspace=str(ws),
                               launcher="local", hosts=["localhost"], nprocs=1, train_steps=10,
                               array_id=array_id, array_index=i)
            if test is not None:
                w = metrics.MetricsWriter(ws)
                w.add({"phase": "test", "step": 0, "group": 0, "accuracy": 0.99, "loss": 0.01})
                w.add({"phase": "test", "step": 10, "group": 0, "accuracy": test[0],
                       "loss": test[1]})
                w.close()
            if reported is not None:
                reg.progress(j.id, 10, loss=reported[1], accuracy=reported[0])
            reg.transition(j.id, jobdb.RUNNING)
            reg.transition(j.id, state)
            return reg.job(j.id)

        jobs = [job(0, jobdb.SUCCEEDED, test=(0.5, 1.0)), job(1, jobdb.FAILED, test=(0.9, 0.1)),
                job(2, jobdb.SUCCEEDED, test=(0.7, 0.9)), job(3, jobdb.SUCCEEDED),
                job(4, jobdb.SUCCEEDED, reported=(0.6, 0.2)),
                job(5, jobdb.SUCCEEDED, test=(0.7, 0.8))]
    rows = sweeps.ranked(jobs, "accuracy")
    assert [j.array_index for j, _ in rows] == [5, 2, 4, 0, 3, 1]
    assert rows[0][1] == sweeps.Final(0.7, 0.8, sweeps.TEST)
    assert rows[2][1] == sweeps.Final(0.6, 0.2, sweeps.REPORTED)
    assert sweeps.best(rows) == rows[0]
    assert [j.array_index for j, _ in sweeps.ranked(jobs, "loss")] == [4, 5, 2, 0, 3, 1]
    assert sweeps.best(sweeps.ranked([jobs[1], jobs[3]])) is None
