"""MasterLink notices a gone master even when its queue to the master is full."""
from __future__ import annotations

import threading
import time

import zmq

from runtime.comm import heartbeat as H


def test_a_full_queue_to_a_dead_master_does_not_hide_its_death(monkeypatch, tmp_path):
    monkeypatch.setattr(H, "HEARTBEAT_S", 0.1)
    ctx = zmq.Context()
    master = ctx.socket(zmq.ROUTER)
    master.bind(f"ipc://{tmp_path}/master")
    lost = threading.Event()
    reasons: list[str] = []

    def on_lost(why: str) -> None:
        reasons.append(why)
        lost.set()

    link = H.MasterLink(ctx, 0, f"ipc://{tmp_path}/master", on_master_lost=on_lost)
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
