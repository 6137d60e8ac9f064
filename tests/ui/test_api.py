"""The dashboard's JSON API and access rules (runtime/ui), through Starlette's
TestClient on a registry filled through the registry API: every endpoint,
the token rules, and that no answer ever holds a job's secret."""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

with warnings.catch_warnings():  # Starlette's TestClient still runs on httpx, and says so
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from runtime.jobs import jobdb
from runtime.ui import api
from runtime.ui.app import create_app

TOKEN = "t0ken-for-tests"
SECRET = "curve-secret-key-THAT-MUST-NEVER-SHOW"


def _job(reg: jobdb.JobDB, tmp: Path, name: str, **kw) -> jobdb.Job:
    ws = tmp / f"{name}.ws"
    ws.mkdir(exist_ok=True)
    return reg.create_job(name=name, conf_path=str(tmp / f"{name}.conf"),
                          conf_text=f'name: "{name}"\n', workspace=str(ws), launcher="local",
                          hosts=["localhost"], nprocs=1, train_steps=100,
                          secret={"curve": {"secret": SECRET}}, **kw)


def _records(n: int, t0: float = 1.7e9) -> list[dict]:
    out = []
    for s in range(0, n * 10, 10):
        out.append({"time": t0 + s, "step": s, "phase": "train", "group": 0, "loss": 2.0 / (1 + s),
                    "accuracy": s / (n * 10)})
        if s % 20 == 0:
            out.append({"time": t0 + s, "step": s, "phase": "test", "group": 0, "loss": 2.5 / (1 + s),
                        "accuracy": s / (n * 12)})
    out.append({"time": t0 + n * 10, "phase": "server", "group": 1, "server": "0/0", "updates": 40,
                "staleness_mean": 1.5, "staleness_max": 3})
    return out


def _write_metrics(ws: str | None, recs: list[dict]) -> None:
    assert ws is not None
    with open(Path(ws) / "metrics.jsonl", "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    with jobdb.JobDB(h) as reg:
        done = _job(reg, tmp_path, "done")
        reg.transition(done.id, jobdb.RUNNING)
        a = reg.begin_attempt(done.id)
        log = Path(done.log_dir) / "attempt-1" / "procs-0.log"
        log.parent.mkdir(parents=True)
        log.write_text("Test @ step 0  Loss = 1.1, accuracy = 0.1\nTrain @ step 0  Loss = 1.0\n")
        reg.add_proc(done.id, a, 0, host="localhost", role="worker 0/0", log_path=str(log))
        reg.update_proc(done.id, a, 0, pid=4242, pgid=4242, state=jobdb.FAILED, exit_code=1,
                        heartbeat=time.time())
        a2 = reg.begin_attempt(done.id)
        reg.add_proc(done.id, a2, 0, host="localhost", role="worker 0/0", log_path=str(log))
        reg.update_proc(done.id, a2, 0, state=jobdb.SUCCEEDED, exit_code=0)
        reg.progress(done.id, 100, loss=0.5, accuracy=0.8)
        reg.transition(done.id, jobdb.SUCCEEDED)
        _write_metrics(done.workspace, _records(10))
        ck = Path(done.workspace or "") / "checkpoint"
        ck.mkdir()
        for f in ("step50-worker0", "step50-worker0.sha256", "step50-worker0.resume",
                  "step100-worker0", "step100-worker0.resume.sha256"):
            (ck / f).write_bytes(b"x" * 10)
        arr = reg.create_array("sweep", str(tmp_path / "s.conf"), {"sets": []})
        for i, lr in enumerate(("0.1", "0.01")):
            j = _job(reg, tmp_path, f"s{i}", array_id=arr, array_index=i,
                     settings={"updater.learning_rate.base_lr": lr})
            reg.transition(j.id, jobdb.RUNNING)
            reg.transition(j.id, jobdb.SUCCEEDED)
            _write_metrics(j.workspace, [{"time": 1.0, "step": 100, "phase": "test", "group": 0,
                                          "loss": 1.0 - i * 0.5, "accuracy": 0.5 + i * 0.3}])
        # two jobs that queue: after a job that is still running
        run = _job(reg, tmp_path, "run")
        reg.transition(run.id, jobdb.RUNNING)
        reg.set_master(run.id, os.getpid(), None)
        for n in ("q1", "q2"):
            _job(reg, tmp_path, n, after=[[run.id, "ok"]], priority=1 if n == "q2" else 0)
    return h


@pytest.fixture
def client(home):
    with TestClient(create_app(home, TOKEN)) as c:
        yield c


def test_jobs_list_queue_arrays_and_since(client):
    d = client.get("/api/jobs").json()
    by = {j["name"]: j for j in d["jobs"]}
    assert [j["id"] for j in d["jobs"]] == sorted(j["id"] for j in d["jobs"])
    assert by["done"]["state"] == jobdb.SUCCEEDED and by["done"]["step"] == 100
    assert by["done"]["hosts"] == ["localhost"]
    # the queue's order: priority first, then id
    assert by["q1"]["state"] == by["q2"]["state"] == jobdb.QUEUED
    assert (by["q2"]["queue_position"], by["q1"]["queue_position"]) == (1, 2)
    assert by["q1"]["reason"]
    arr = str(by["s0"]["array_id"])
    assert d["arrays"][arr]["name"] == "sweep" and d["arrays"][arr]["states"] == {"SUCCEEDED": 2}
    # nothing changed: the answer says so and nothing more
    again = client.get("/api/jobs", params={"since": d["version"]}).json()
    assert again["unchanged"] is True and "jobs" not in again
    only = client.get("/api/jobs", params={"state": "QUEUED"}).json()
    assert {j["name"] for j in only["jobs"]} == {"q1", "q2"}
    assert client.get("/api/jobs", params={"state": "BOGUS"}).status_code == 400


def test_since_changes_when_a_job_changes(client, home):
    v = client.get("/api/jobs").json()["version"]
    with jobdb.JobDB(home) as reg:
        q = [j for j in reg.jobs() if j.name == "q1"][0]
        reg.transition(q.id, jobdb.KILLED, "test")
    d = client.get("/api/jobs", params={"since": v}).json()
    assert not d.get("unchanged")
    assert {j["name"]: j["state"] for j in d["jobs"]}["q1"] == jobdb.KILLED


def test_job_view(client):
    d = client.get("/api/jobs/1").json()
    assert d["job"]["name"] == "done" and d["attempt"] == 2
    assert [p["state"] for p in d["procs"]] == [jobdb.SUCCEEDED]
    assert d["earlier_attempts"][0]["attempt"] == 1
    assert "exited with code 1" in d["earlier_attempts"][0]["summary"]
    assert [c["file"] for c in d["checkpoints"]] == ["step100-worker0", "step50-worker0"]
    assert d["has_metrics"] is True
    q = [j for j in client.get("/api/jobs").json()["jobs"] if j["name"] == "q1"][0]
    assert client.get(f"/api/jobs/{q['id']}").json()["job"]["queue_position"] == 2
    assert client.get("/api/jobs/999").status_code == 404


def test_metrics_from_an_offset(client, home):
    d = client.get("/api/jobs/1/metrics").json()
    assert len(d["records"]) == len(_records(10)) and d["offset"] > 0 and not d["more"]
    assert {r["phase"] for r in d["records"]} == {"train", "test", "server"}
    ws = jobdb.JobDB(home).job(1).workspace
    with open(Path(ws) / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"time": 2e9, "step": 999, "phase": "train", "loss": 0.1}) + "\n")
        f.write('{"time": 2e9, "step": 10')  # a line being written: not yet
    d2 = client.get("/api/jobs/1/metrics", params={"offset": d["offset"]}).json()
    assert [r["step"] for r in d2["records"]] == [999]
    # a stream that shrank (replaced) is read again from its start
    (Path(ws) / "metrics.jsonl").write_text(json.dumps({"time": 1, "step": 1, "phase": "train"}) + "\n")
    d3 = client.get("/api/jobs/1/metrics", params={"offset": d2["offset"]}).json()
    assert d3["reset"] and [r["step"] for r in d3["records"]] == [1]


def test_log_tail_and_follow(client, home):
    d = client.get("/api/jobs/1/log", params={"proc": 0}).json()
    assert d["lines"][0].startswith("Test @ step 0") and d["attempt"] == 2
    log = Path(jobdb.JobDB(home).procs(1)[0].log_path)
    with open(log, "a") as f:
        f.write("Train @ step 5  Loss = 0.9\npartial")
    d2 = client.get("/api/jobs/1/log", params={"proc": 0, "offset": d["offset"]}).json()
    assert d2["lines"] == ["Train @ step 5  Loss = 0.9"]
    d1 = client.get("/api/jobs/1/log", params={"proc": 0, "attempt": 1}).json()
    assert d1["attempt"] == 1
    assert client.get("/api/jobs/1/log", params={"proc": 7}).status_code == 404
    assert client.get("/api/jobs/1/log", params={"proc": "x"}).status_code == 400


def test_compare_and_the_sweep_table(client):
    jobs = client.get("/api/jobs").json()["jobs"]
    arr = [j for j in jobs if j["array_id"] is not None][0]["array_id"]
    d = client.get("/api/compare", params={"array": arr, "jobs": "1"}).json()
    assert d["array"]["name"] == "sweep"
    rows = d["table"]["rows"]
    # ranked as singa sweep show ranks it: the best final test accuracy first
    assert [r["settings"]["updater.learning_rate.base_lr"] for r in rows] == ["0.01", "0.1"]
    assert rows[0]["accuracy"] == pytest.approx(0.8) and rows[0]["source"]
    assert d["table"]["settings"] == ["updater.learning_rate.base_lr"]
    assert 1 in [j["id"] for j in d["jobs"]] and len(d["jobs"]) == 3
    assert client.get("/api/compare", params={"jobs": "1,x"}).status_code == 400
    assert client.get("/api/compare", params={"array": 99}).status_code == 404
    assert api.parse_ids("3,5-7, 3") == [3, 5, 6, 7]


def test_pages_render(client):
    for path in ("/", "/?state=QUEUED", "/jobs/1", "/jobs/1/log", "/jobs/1/log?proc=0&attempt=1",
                 "/compare?jobs=1", "/compare?array=1", "/compare"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert "content-security-policy" in r.headers and r.headers["x-frame-options"] == "DENY"
    assert "No such job" in client.get("/jobs/999").text
    assert client.get("/static/uPlot.iife.min.js").status_code == 200
    # the page read without the token carries no token for its buttons
    assert TOKEN not in client.get("/jobs/1").text
    assert TOKEN in client.get("/jobs/1", params={"token": TOKEN}).text


def test_no_secret_is_ever_served(client):
    jobs = client.get("/api/jobs").json()["jobs"]
    paths = ["/api/jobs", "/api/compare?jobs=" + ",".join(str(j["id"]) for j in jobs)]
    for j in jobs:
        i = j["id"]
        paths += [f"/api/jobs/{i}", f"/api/jobs/{i}/metrics", f"/api/jobs/{i}/log", f"/jobs/{i}",
                  f"/jobs/{i}/log", f"/api/jobs/{i}/summary"]
    for p in paths:
        r = client.get(p)
        assert SECRET not in r.text and '"secret"' not in r.text, p


def test_actions_need_post_and_the_token(client, home):
    q = [j for j in client.get("/api/jobs").json()["jobs"] if j["name"] == "q1"][0]["id"]
    assert client.post(f"/jobs/{q}/kill").status_code == 403
    assert client.post(f"/jobs/{q}/kill", data={"token": "wrong"}).status_code == 403
    # the token in the query string or a cookie does not make a POST (CSRF)
    assert client.post(f"/jobs/{q}/kill?token={TOKEN}").status_code == 403
    client.cookies.set("singa_token", TOKEN)
    assert client.post(f"/jobs/{q}/kill").status_code == 403
    client.cookies.clear()
    assert client.get(f"/jobs/{q}/kill").status_code == 405
    assert jobdb.JobDB(home).job(q).state == jobdb.QUEUED
    r = client.post(f"/jobs/{q}/kill", data={"token": TOKEN})
    assert r.status_code == 200 and r.json()["state"] == jobdb.KILLED
    assert jobdb.JobDB(home).job(q).state == jobdb.KILLED
    # the header works too; an ended job is not killed again
    r = client.post(f"/jobs/{q}/kill", headers={"X-Singa-Token": TOKEN})
    assert r.status_code == 409 and "already ended" in r.json()["error"]
    # resubmitting an active job is refused (kill it first)
    q2 = [j for j in client.get("/api/jobs").json()["jobs"] if j["name"] == "q2"][0]["id"]
    r = client.post(f"/jobs/{q2}/resubmit", headers={"X-Singa-Token": TOKEN})
    assert r.status_code == 409 and "kill it first" in r.json()["error"]


def test_reads_need_the_token_off_loopback(home):
    with TestClient(create_app(home, TOKEN, reads_need_token=True)) as c:
        assert c.get("/").status_code == 403
        assert c.get("/api/jobs").status_code == 403
        assert c.get("/static/style.css").status_code == 200
        r = c.get("/", params={"token": TOKEN})
        assert r.status_code == 200 and "singa_token" in r.headers["set-cookie"]
        assert "httponly" in r.headers["set-cookie"].lower()
        assert "samesite=strict" in r.headers["set-cookie"].lower()
        assert c.get("/api/jobs").status_code == 200  # the cookie
        c.cookies.clear()
        assert c.get("/api/jobs", headers={"X-Singa-Token": TOKEN}).status_code == 200


def test_resume_and_resubmit_a_real_job(tmp_path):
    """Resubmit runs the job's conf again from its own directory; resume
    continues from its latest checkpoint (singa submit --resume)."""
    from tests.ui.browser import conf, submit, wait_for

    home = tmp_path / "home"
    home.mkdir()
    (home / "hosts").write_text("localhost slots=4\n")
    first = submit(home, conf(tmp_path, "mlp", steps=30, test_freq=15, ckpt=15))
    with jobdb.JobDB(home) as reg:
        wait_for(lambda: reg.reconcile(reg.job(first)).terminal, 60, "the job to end")
        assert reg.job(first).state == jobdb.SUCCEEDED
    with TestClient(create_app(home, TOKEN)) as c:
        assert c.post(f"/jobs/{first}/resubmit").status_code == 403
        r = c.post(f"/jobs/{first}/resubmit", data={"token": TOKEN})
        assert r.status_code == 200, r.text
        again = r.json()["job"]
        assert again != first
        with jobdb.JobDB(home) as reg:
            wait_for(lambda: reg.reconcile(reg.job(again)).terminal, 60, "the resubmitted job to end")
            job = reg.job(again)
            assert job.state == jobdb.SUCCEEDED and job.options["resume"] is False
            assert job.conf_text == reg.job(first).conf_text and job.name == reg.job(first).name
        r = c.post(f"/jobs/{again}/resume", headers={"X-Singa-Token": TOKEN})
        assert r.status_code == 200, r.text
        resumed = r.json()["job"]
        with jobdb.JobDB(home) as reg:
            wait_for(lambda: reg.reconcile(reg.job(resumed)).terminal, 60, "the resumed job to end")
            job = reg.job(resumed)
            assert job.state == jobdb.SUCCEEDED and job.options["resume"] is True
        # the conf file changed since: the text the job ran with is what is submitted again
        Path(tmp_path / "mlp.conf").write_text("name: 'x'\nbogus_field: 1\n")
        r = c.post(f"/jobs/{first}/resubmit", data={"token": TOKEN})
        assert r.status_code == 200, r.text
        with jobdb.JobDB(home) as reg:
            last = r.json()["job"]
            assert (Path(reg.job(first).log_dir) / "resubmit.conf").read_text() == reg.job(last).conf_text
            wait_for(lambda: reg.reconcile(reg.job(last)).terminal, 60, "the last job to end")
            assert reg.job(last).state == jobdb.SUCCEEDED
        # a refusal is submit's own message: --resume with no checkpoint
        (tmp_path / "mlp.ws" / "checkpoint").rename(tmp_path / "gone")
        r = c.post(f"/jobs/{first}/resume", data={"token": TOKEN})
        assert r.status_code == 409 and "no checkpoint" in r.json()["error"]


def test_singa_ui_off_loopback_asks_for_the_token_and_says_so(tmp_path):
    import httpx

    from tests.ui.browser import UiServer

    home = tmp_path / "home"
    home.mkdir()
    server = UiServer(home, "--host", "0.0.0.0")
    try:
        banner = "".join(server.banner)
        assert "every page asks for the token" in banner and "0.0.0.0" in server.url
        url = server.url.replace("0.0.0.0", "127.0.0.1")
        assert httpx.get(url + "/").status_code == 403
        assert httpx.get(url + "/api/jobs").status_code == 403
        r = httpx.get(url + "/", params={"token": server.token})
        assert r.status_code == 200 and "actions enabled" in r.text
    finally:
        server.stop()


def test_singa_ui_port_in_use_is_one_line(tmp_path):
    import socket

    from tests.ui.browser import singa

    home = tmp_path / "home"
    home.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = singa(home, "ui", "--port", str(s.getsockname()[1]))
    assert r.returncode == 2 and "cannot listen on 127.0.0.1" in r.stderr and "--port 0" in r.stderr
    assert "Traceback" not in r.stderr
