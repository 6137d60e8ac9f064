"""MasterLink notices a gone master even when its queue to the master is full."""
from __future__ import annotations

import threading
import time

import zmq

from runtime.comm import heartbeat


def test_a_full_queue_to_a_dead_master_does_not_hide_its_death(monkeypatch, tmp_path):
    monkeypatch.setattr(heartbeat, "HEARTBEAT_S", 0.1)
    ctx = zmq.Context()
    master = ctx.socket(zmq.ROUTER)
    master.bind(f"ipc://{tmp_path}/master")
    lost = threading.Event()
    reasons: list[str] = []

    def on_lost(why: str) -> None:
        reasons.append(why)
        lost.set()

    link = heartbeat.MasterLink(ctx, 0, f"ipc://{tmp_path}/master", on_master_lost=on_lost)
    link.sock.setsockopt(zmq.SNDHWM, 4)
    link.start()
    master.close(linger=0)  # the master is gone: nothing drains the link's queue
    t0 = time.monotonic()
    for i in range(5000):  # a job logging metrics at full speed
        link.metric({"step": i, "loss": 0.5})
    assert lost.wait(10), "the link never noticed that the master is gone"
    assert time.monotonic() - t0 < 5
    assert "no word from the job master" in reasons[0]
    assert link.dropped > 0
    link.close(timeout=1)
    ctx.term()


def test_fail_hands_the_reason_to_the_master_and_waits_for_its_answer(tmp_path):
    """Before the link's thread runs (an error before kConnect) and from
    another thread once it runs: the master gets kFail with the reason and
    answers; without an answer fail() gives up after its timeout."""
    import json

    from conf import common_pb2
    from runtime.comm import socket as zsock
    from runtime.comm.msg import Addr, Msg

    ctx = zmq.Context()
    master = ctx.socket(zmq.ROUTER)
    master.bind(f"ipc://{tmp_path}/master")
    got: list[str] = []
    answer, stop = threading.Event(), threading.Event()
    answer.set()

    def serve() -> None:
        while not stop.is_set():
            if not master.poll(50):
                continue
            ident, msg = zsock.recv(master, router=True)  # type: ignore[misc]  # polled
            if msg.type == common_pb2.kFail:
                got.append(json.loads(msg.bytes(0))["reason"])
                if answer.is_set():
                    zsock.send(master, Msg(Addr.stub(-1), msg.src, common_pb2.kFail), to=ident)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    link = heartbeat.MasterLink(ctx, 3, f"ipc://{tmp_path}/master")
    assert link.fail("zipfile.BadZipFile: File is not a zip file")
    link.start()
    out: list[bool] = []
    worker = threading.Thread(target=lambda: out.append(link.fail("RuntimeError: boom at step 3")))
    worker.start()
    worker.join(10)
    assert out == [True]
    assert got == ["zipfile.BadZipFile: File is not a zip file", "RuntimeError: boom at step 3"]
    answer.clear()
    link._failed.clear()  # a second failure, which the master does not answer
    assert not link.fail("diverged: loss is nan", timeout=0.5)
    link.close(timeout=1)
    stop.set()
    t.join(10)
    master.close(linger=0)
    ctx.term()
