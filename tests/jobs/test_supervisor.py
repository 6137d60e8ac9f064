"""The job master's supervision rules (`runtime.jobs.supervisor`), without
processes, sockets or a registry: messages and exits go in with the time,
actions come out."""
from __future__ import annotations

import json

from conf import common_pb2
from runtime.comm.heartbeat import HEARTBEAT_S, MISSED
from runtime.comm.msg import Addr, Msg
from runtime.jobs import jobdb
from runtime.jobs.supervisor import (
    Learned,
    Progress,
    Send,
    Supervisor,
    Transition,
    UpdateProc,
    Verdict,
    WriteMetric,
)


def msg(p: int, type_: int, body: dict | None = None) -> Msg:
    m = Msg(Addr.stub(p), Addr.stub(-1), type_)
    return m.add_bytes(json.dumps(body).encode()) if body is not None else m


def connect(sup: Supervisor, p: int, now: float) -> list:
    info = {"endpoint": f"ipc://proc-{p}", "pid": 100 + p, "pgid": 100 + p, "start_time": 5.0 + p}
    return sup.on_message(b"id%d" % p, msg(p, common_pb2.kConnect, info), now)


def of(actions: list, kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


def verdict(actions: list) -> Verdict | None:
    found = of(actions, Verdict)
    assert len(found) <= 1 and (not found or actions[-1] is found[0]), "a Verdict ends the actions"
    return found[0] if found else None


def running(n: int = 2, now: float = 0.0) -> Supervisor:
    sup = Supervisor(n, now, samples_per_step=64)
    for p in range(n):
        connect(sup, p, now)
    return sup


def test_the_address_book_goes_out_only_when_all_have_connected():
    sup = Supervisor(2, 0.0)
    first = connect(sup, 0, 1.0)
    assert of(first, Learned) == [Learned(0, 100, 100, 5.0, None)]
    rows = of(first, UpdateProc)
    assert rows[0].fields["state"] == jobdb.RUNNING and rows[0].fields["endpoint"] == "ipc://proc-0"
    assert rows[0].beat
    assert not of(first, Send) and not of(first, Transition)
    second = connect(sup, 1, 2.0)
    sends = of(second, Send)
    assert sorted(s.to for s in sends) == [b"id0", b"id1"]
    for s in sends:
        assert s.msg.type == common_pb2.kConnect
        assert json.loads(s.msg.bytes(0)) == {"0": "ipc://proc-0", "1": "ipc://proc-1"}
    assert of(second, Transition) == [Transition(jobdb.RUNNING)]


def test_a_process_that_never_connects_fails_the_attempt_after_the_timeout():
    sup = Supervisor(3, 10.0, connect_timeout=30.0)
    connect(sup, 0, 11.0)
    connect(sup, 2, 12.0)
    for p in (0, 2):
        sup.on_message(b"id%d" % p, msg(p, common_pb2.kHeartbeat, {"step": 0}), 39.0)
    assert sup.check(40.0) == []
    v = verdict(sup.check(40.5))
    assert v is not None and (v.state, v.procs) == ("FAILED", 1)
    assert v.words == "did not connect to the job master within 30 s"


def test_heartbeats_are_answered_and_written_at_most_once_a_second():
    sup = running()
    a = sup.on_message(b"id0", msg(0, common_pb2.kHeartbeat, {"step": 10}), 1.0)
    assert [s.to for s in of(a, Send)] == [b"id0"] and of(a, Send)[0].msg.type == common_pb2.kHeartbeat
    assert of(a, UpdateProc) == [UpdateProc(0, {"step": 10}, beat=True)]
    assert of(a, Progress) == [Progress(10, {"samples_per_s": None})]
    a = sup.on_message(b"id0", msg(0, common_pb2.kHeartbeat, {"step": 15}), 1.5)
    assert of(a, Send) and not of(a, UpdateProc) and not of(a, Progress)
    a = sup.on_message(b"id0", msg(0, common_pb2.kHeartbeat, {"step": 30}), 3.0)
    # 20 steps in 2 s of process 0, 64 samples a step
    assert of(a, Progress) == [Progress(30, {"samples_per_s": 640.0})]
    a = sup.on_message(b"id1", msg(1, common_pb2.kHeartbeat, {"step": 30}), 3.0)
    assert of(a, UpdateProc) == [UpdateProc(1, {"step": 30}, beat=True)] and not of(a, Progress)


def test_silence_is_judged_only_when_the_queue_is_read():
    sup = running(2, now=0.0)
    limit = MISSED * HEARTBEAT_S
    sup.on_message(b"id1", msg(1, common_pb2.kHeartbeat, {"step": 1}), 1.0)
    sup.on_message(b"id0", msg(0, common_pb2.kHeartbeat, {"step": 1}), limit)
    assert sup.check(limit + 1.0) == []  # process 1 silent for exactly the limit
    late = limit + 1.5
    assert sup.check(late, behind=True) == []  # its heartbeat may be waiting in the queue
    a = sup.check(late)
    assert of(a, UpdateProc) == [UpdateProc(1, {"state": jobdb.LOST})]
    v = verdict(a)
    assert v is not None and (v.state, v.procs) == ("FAILED", 1)
    assert v.words == f"went silent: no heartbeat for {late - 1.0:.1f} s"


def test_a_process_that_exited_is_not_blamed_for_its_silence():
    sup = running(1)
    sup.exited[0] = 0  # seen exiting (after the stop) but the attempt is not judged yet
    sup.stopping, sup.n = True, 2
    assert sup.check(100.0) == []


def test_a_non_zero_exit_fails_the_attempt_with_its_status():
    sup = running()
    a = sup.on_exit(1, -9, 5.0)
    assert of(a, UpdateProc) == [UpdateProc(1, {"state": jobdb.FAILED, "exit_code": None,
                                                "signal": 9})]
    v = verdict(a)
    assert v is not None and (v.state, v.procs, v.exit, v.words, v.said) == ("FAILED", 1, -9, "", None)


def test_an_exit_0_before_the_stop_fails_the_attempt():
    sup = running()
    v = verdict(sup.on_exit(0, 0, 5.0))
    assert v is not None and v.words == "exited with code 0 before the job finished"


def test_the_reason_a_process_sent_with_kfail_is_its_blame():
    sup = running()
    a = sup.on_message(b"id1", msg(1, common_pb2.kFail, {"reason": " diverged: loss is nan \n"}), 2.0)
    assert [(s.to, s.msg.type) for s in of(a, Send)] == [(b"id1", common_pb2.kFail)]  # the answer
    assert verdict(a) is None
    v = verdict(sup.on_exit(1, 1, 2.5))
    assert v is not None and (v.procs, v.said) == (1, "diverged: loss is nan")


def test_kstop_from_all_stops_everyone_and_exit_0_of_all_succeeds():
    sup = running()
    sup.on_message(b"id0", msg(0, common_pb2.kHeartbeat, {"step": 99}), 1.0)
    a = sup.on_message(b"id0", msg(0, common_pb2.kStop), 1.2)
    # the final step of process 0 is recorded even within the write interval
    assert of(a, UpdateProc) == [UpdateProc(0, {"step": 99}, beat=True)]
    assert of(a, Progress) == [Progress(99)]
    assert not of(a, Send) and not sup.stopping
    a = sup.on_message(b"id1", msg(1, common_pb2.kStop), 1.3)
    assert sorted((s.to, s.msg.type) for s in of(a, Send)) == [(b"id0", common_pb2.kStop),
                                                              (b"id1", common_pb2.kStop)]
    assert sup.stopping
    assert sup.on_exit(0, 0, 1.4) == [] and sup.check(1.4) == []
    assert sup.on_exit(1, 0, 1.5) == []
    a = sup.check(1.5)
    assert of(a, UpdateProc) == [UpdateProc(p, {"state": jobdb.SUCCEEDED, "exit_code": 0})
                                 for p in (0, 1)]
    v = verdict(a)
    assert v is not None and (v.state, v.procs) == ("SUCCEEDED", None)


def test_a_failing_exit_after_the_stop_still_fails():
    sup = running()
    for p in (0, 1):
        sup.on_message(b"id%d" % p, msg(p, common_pb2.kStop), 1.0)
    v = verdict(sup.on_exit(1, 3, 1.5))
    assert v is not None and (v.state, v.procs, v.exit) == ("FAILED", 1, 3)


def test_metrics_are_written_and_the_main_phase_is_progress():
    sup = running()
    rec = {"phase": "train", "step": 40, "loss": 0.5, "accuracy": 0.9}
    a = sup.on_message(b"id0", msg(0, common_pb2.kMetric, rec), 1.0)
    assert a == [WriteMetric(rec), Progress(40, {"loss": 0.5, "accuracy": 0.9})]
    cd = {"phase": "test", "step": 50, "squared_error": 2.0}
    assert of(sup.on_message(b"id0", msg(0, common_pb2.kMetric, cd), 1.0), Progress) == [
        Progress(50, {"loss": 2.0, "accuracy": None})]
    other = {"phase": "train", "step": 40, "loss": 0.7, "group": 1}
    assert sup.on_message(b"id1", msg(1, common_pb2.kMetric, other), 1.0) == [WriteMetric(other)]


def test_a_message_from_an_unknown_process_is_dropped():
    sup = Supervisor(2, 0.0)
    assert sup.on_message(b"x", msg(7, common_pb2.kHeartbeat, {"step": 1}), 1.0) == []
    assert sup.heard == {}
