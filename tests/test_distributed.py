"""The distributed runtime end to end, as real processes on this host:
sync training in a group equals one worker with the whole batch, slicing
over servers changes nothing, async groups train."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime import checkpoint
from runtime.config import load_job
from runtime.train import single as in_process
from tests.test_training import make_conf


def conf_with(tmp: Path, name: str, cluster: str, steps: int = 20, updater: str = "kSGD") -> Path:
    p = make_conf(tmp, name, steps=steps, test_freq=steps, updater=updater, workspace=name + ".ws")
    text = p.read_text()
    # no dropout: its random masks would differ between partitions
    text = text.replace('layer { name: "drop1" type: kDropout srclayers: "relu1" '
                        'dropout_conf { dropout_ratio: 0.2 } }', "")
    text = text.replace('srclayers: "drop1"', 'srclayers: "relu1"')
    text = text.replace("random_skip: 20 prefetching: true", "")
    text = text.replace(f'cluster {{ workspace: "{name}.ws" }}',
                        f'cluster {{ workspace: "{name}.ws" {cluster} }}')
    p.write_text(text)
    return p


def submit(conf: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "singa_cli.main", "submit", str(conf)],
                          cwd=conf.parent, capture_output=True, text=True, timeout=300)


def final_params(conf: Path, steps: int = 20) -> dict[str, np.ndarray]:
    ws = conf.parent / (conf.stem + ".conf.ws")
    return {k: v for k, (_, v) in checkpoint.load([str(ws / "checkpoint" / f"step{steps}-worker0")]).items()}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    conf = conf_with(tmp, "one.conf", "")
    worker = in_process.train(load_job(str(conf), submit=True).proto, log=lambda l: None)
    return tmp, {p.name: p.data.copy() for p in worker.owned_params()}


@pytest.mark.parametrize("per_procs", [1, 2])
def test_sync_group_of_two_equals_one_worker(single, per_procs):
    """Two workers (batch 4 + 4), in two processes or in one, against one worker (batch 8)."""
    tmp, ref = single
    conf = conf_with(tmp, f"sync{per_procs}.conf",
                     f"nworkers_per_group: 2 nworkers_per_procs: {per_procs}")
    r = submit(conf)
    assert r.returncode == 0, r.stderr
    assert "Test @ step 20  Loss = " in r.stdout
    got = final_params(conf)
    for name, values in ref.items():
        assert np.max(np.abs(got[name] - values)) <= 1e-5, name


@pytest.mark.parametrize("nservers", [2, 3])
def test_slicing_over_servers_gives_the_same_params(single, nservers):
    tmp, ref = single
    conf = conf_with(tmp, f"sliced{nservers}.conf", f"nservers_per_group: {nservers}")
    r = submit(conf)
    assert r.returncode == 0, r.stderr
    got = final_params(conf)
    for name, values in ref.items():
        assert np.max(np.abs(got[name] - values)) <= 1e-5, name


def test_async_groups_train_and_report_staleness(tmp_path):
    conf = conf_with(tmp_path, "async.conf", "nworker_groups: 2", steps=60)
    r = submit(conf)
    assert r.returncode == 0, r.stderr
    tests = [l for l in r.stdout.splitlines() if l.startswith("Test @ step 60")]
    acc = float(tests[0].split("accuracy = ")[1])
    assert acc >= 0.8, r.stdout
    # the server reports each group's updates and their staleness
    line = next(l for l in r.stdout.splitlines() if l.startswith("Server (0,0): "))
    # 4 param slices x 60 steps per group
    assert "group 0: 240 updates, staleness mean" in line and "group 1: 240 updates" in line, line
    # the metrics stream holds both groups' curves and the servers' staleness
    from runtime.jobs.metrics import read

    recs = read(tmp_path / "async.conf.ws")
    train = [r for r in recs if r["phase"] == "train"]
    assert {r["group"] for r in train} == {0, 1}
    assert all(r["lr"] > 0 and "loss" in r and "accuracy" in r for r in train)
    assert any("samples_per_s" in r for r in train if r["group"] == 1)
    server = [r for r in recs if r["phase"] == "server"]
    final = {r["group"]: r for r in server}  # the last record of each group
    assert final[0]["updates"] == 240 and final[1]["updates"] == 240
    assert all(r["staleness_max"] >= 0 and "staleness_mean" in r for r in server)


def test_stub_survives_a_foreign_peer_sending_garbage():
    """A process that connects to a stub's port and sends garbage does not crash it."""
    import threading

    import zmq

    from conf import common_pb2
    from runtime.cluster import Cluster
    from runtime.comm import socket as zsock
    from runtime.comm.msg import Addr, Msg
    from runtime.ps.stub import Stub

    ctx = zmq.Context()
    stub = Stub(ctx, Cluster(nworker_groups=1), 0, transport="tcp")
    seen = []
    stub.handle = lambda msg: (seen.append(msg), stub.__setattr__("running", False))
    t = threading.Thread(target=stub.run)
    t.start()
    raw = ctx.socket(zmq.DEALER)
    raw.connect(stub.endpoint)
    raw.send_multipart([b"\x00" * 5])
    raw.send_multipart([b"SG\x01\x63" + bytes(23)])       # an unknown message type
    raw.send_multipart([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"])
    # then a well-formed message to this stub is still handled
    zsock.send(raw, Msg(Addr.worker(0, 0), Addr.stub(0), common_pb2.kStop))
    t.join(timeout=10)
    assert not t.is_alive()
    assert len(seen) == 1 and seen[0].type == common_pb2.kStop
    raw.close()
    stub.close()
    ctx.term()


def test_stopping_submit_stops_every_process(tmp_path):
    """TERM to a following `singa submit` stops the job: KILLED, no process left."""
    import signal
    import time

    from runtime.jobs import jobdb, pgroup

    conf = conf_with(tmp_path, "long.conf", "nworker_groups: 2 nworkers_per_group: 2", steps=10**6)
    proc = subprocess.Popen([sys.executable, "-m", "singa_cli.main", "submit", str(conf)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("Train @ step"):
            break
    reg = jobdb.JobDB()
    job = next(j for j in reg.jobs() if j.conf_path == str(conf))
    procs = reg.procs(job.id)
    assert len(procs) == 4  # 2 groups x 2 workers, one process each
    assert all(pgroup.alive(p.pid, p.start_time) for p in procs)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while any(pgroup.members(p.pgid, p.start_time) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pgroup.members(p.pgid, p.start_time) for p in procs)
    assert not pgroup.alive(job.master_pid, job.master_start)
    job = reg.job(job.id)
    assert job.state == jobdb.KILLED and "interrupted" in job.reason
    assert proc.returncode == 130
    assert f"job {job.id} KILLED: interrupted from the submitting terminal" in proc.stderr.read()


def test_downpour_with_separate_servers_reports_every_server(tmp_path):
    """Two async groups over two servers in their own processes (SINGA's
    Downpour): params sliced over servers that see the groups' updates in
    different orders; every server's staleness reaches the submitter."""
    conf = conf_with(tmp_path, "downpour.conf", "nworker_groups: 2 nservers_per_group: 2 "
                     "server_worker_separate: true", steps=60)
    r = submit(conf)
    assert r.returncode == 0, r.stderr
    servers = [l for l in r.stdout.splitlines() if l.startswith("Server (")]
    assert [l.split(":")[0] for l in servers] == ["Server (0,0)", "Server (0,1)"], r.stdout
    assert all("group 0: " in l and "group 1: " in l and "staleness mean" in l for l in servers)


def test_a_param_on_two_servers_out_of_step_is_still_collected():
    """Two async groups reach the two servers holding a param's slices in
    different orders, so the servers' versions differ; a round of replies
    whose last slice is older than the previous round's last must still
    release `collect` (it once hung the downpour example)."""
    import threading

    import zmq

    from conf import job_pb2
    from runtime.cluster import Cluster
    from runtime.model.param import Param
    from runtime.ps.param_slice import SlicePlan
    from runtime.ps.stub import Stub

    ctx = zmq.Context()
    cluster = Cluster(nworker_groups=2, nservers_per_group=2, server_worker_separate=True)
    stub = Stub(ctx, cluster, 0)
    p = Param(job_pb2.ParamProto(name="w"), (8,))
    p.data, p.grad = np.zeros(8, np.float32), np.zeros(8, np.float32)
    stub.plan = SlicePlan([("w", 8)], cluster)
    stub.register(0, 0, [p], 1)
    stub.link()
    channel = stub.channel(0, 0)
    channel.bind_params([p])
    (sa, _), (sb, _) = stub.targets(stub.entries[(0, 0)])
    # one round: slice b at version 18, then slice a at 20 (a's server ran ahead)
    for sid, version in ((sb.id, 18), (sa.id, 20)):
        stub._values_in(0, 0, sid, version, np.full(4, version, np.float32))
    assert p.version == 18  # the oldest slice's
    p.last_version = p.version  # the worker computes on it and sends its update
    stub.entries[(0, 0)].slices_received = 0
    # the next round: a at 22 first, then b at 19, older than a's last version
    for sid, version in ((sa.id, 22), (sb.id, 19)):
        stub._values_in(0, 0, sid, version, np.full(4, version, np.float32))
    done = threading.Event()
    t = threading.Thread(target=lambda: (channel.collect(p), done.set()), daemon=True)
    t.start()
    assert done.wait(2), "collect never returned"
    assert p.version == 19 and sorted(set(p.data.tolist())) == [19.0, 22.0]
    channel.close()
    stub.close()
    ctx.term()


@pytest.mark.parametrize("updater,cluster", [
    ("kSGD", "server_worker_separate: true"),
    ("kAdam", "server_worker_separate: true"),
    ("kSGD", "nworkers_per_group: 2 nworkers_per_procs: 1 server_worker_separate: true"),
], ids=["sgd-momentum", "adam", "sgd-momentum-2-workers"])
def test_resume_of_a_multi_process_job_is_exact(tmp_path, updater, cluster):
    """Workers and a server in separate processes: 2N steps in one go equal
    N steps, then --resume for N more. The server saves its slices and the
    updater's history (momentum, Adam's moments) beside the checkpoint, and
    each worker of group 0 its data position and random state."""
    full = conf_with(tmp_path, "full.conf", cluster, steps=24, updater=updater)
    assert submit(full).returncode == 0
    # the conf of the first half and of the continuation share a workspace
    half = conf_with(tmp_path, "half.conf", cluster, steps=12, updater=updater)
    assert submit(half).returncode == 0
    state = tmp_path / "half.conf.ws" / "checkpoint" / "step12-server0.0.npz"
    assert state.is_file()
    if updater == "kSGD":  # momentum
        assert any(k.startswith("updater/") for k in np.load(state).files)
    text = half.read_text().replace("train_steps: 12", "train_steps: 24")
    text = text.replace("test_freq: 12", "test_freq: 24")
    half.write_text(text)
    r = subprocess.run([sys.executable, "-m", "singa_cli.main", "submit", str(half), "--resume"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Resumed from step 12" in r.stdout
    a = checkpoint.load([str(tmp_path / "full.conf.ws" / "checkpoint" / "step24-worker0")])
    b = checkpoint.load([str(tmp_path / "half.conf.ws" / "checkpoint" / "step24-worker0")])
    assert set(a) == set(b)
    for name, (_, values) in a.items():
        assert float(np.abs(values - b[name][1]).max()) <= 1e-6, name


def test_multi_process_job_tests_once_at_train_steps(tmp_path):
    """The final test at train_steps (not a multiple of test_freq) also runs
    in a multi-process job, once, by the first worker of group 0."""
    conf = conf_with(tmp_path, "final.conf", "nworkers_per_group: 2", steps=7)
    conf.write_text(conf.read_text().replace("test_freq: 7", "test_freq: 3"))
    r = submit(conf)
    assert r.returncode == 0, r.stderr
    tests = [l.split("  ")[0] for l in r.stdout.splitlines() if l.startswith("Test @ step")]
    assert tests == ["Test @ step 0", "Test @ step 3", "Test @ step 6", "Test @ step 7"]


def test_resume_from_a_damaged_server_state_fails_the_job(tmp_path):
    """The server's state file (slices and the updater's history) is
    checked as the params are: damaged, the job ends FAILED naming it."""
    from runtime.jobs import jobdb
    from tests.test_checkpoint import corrupt_middle

    half = conf_with(tmp_path, "half.conf", "server_worker_separate: true", steps=12)
    half.write_text(half.read_text().replace("num_output: 12", "num_output: 200"))
    assert submit(half).returncode == 0
    state = tmp_path / "half.conf.ws" / "checkpoint" / "step12-server0.0.npz"
    corrupt_middle(state)
    half.write_text(half.read_text().replace("train_steps: 12", "train_steps: 24"))
    r = subprocess.run([sys.executable, "-m", "singa_cli.main", "submit", str(half), "--resume"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    # the worker's process may have resumed, but no step is trained
    assert r.returncode != 0 and "Train @ step" not in r.stdout, r.stdout
    job = max((j for j in jobdb.JobDB().jobs() if j.conf_path == str(half)), key=lambda j: j.id)
    assert job.state == jobdb.FAILED
    assert (f"checkpoint {state}: checksum mismatch (file was changed or damaged after it "
            "was written); ") in job.reason, job.reason
