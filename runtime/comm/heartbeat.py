"""MasterLink: a runtime process's line to its job master.

One thread owns one DEALER socket connected to the master's ROUTER (ZeroMQ
sockets are not thread-safe, so nothing else touches it). Over it:

- `connect(info)` (blocking, before the thread starts): kConnect with this
  process's JSON record (procs id, endpoint, pid, pgid, host, start time);
  the master's kConnect reply carries the address book of every process,
  which is the start barrier.
- every `HEARTBEAT_S` the thread sends kHeartbeat with `{"step": N}`; the
  master answers each one, and three silent periods on either side mean the
  other is gone. A process whose master is gone exits (`on_master_lost`), so
  a dead master never leaves orphans training on some host.
- `metric(record)` and `done()` queue a kMetric (JSON) or kStop for the
  thread to send; they are safe to call from any thread.
- `fail(reason)`: kFail with `{"reason": one line}`, the last word of a
  process that is ending on an error; it waits for the master's kFail back,
  so the master holds the reason before it sees the process exit. Works
  before `connect` too (the master knows a process by its procs id).
- What the master sends (kStop: the job is finishing) is pushed as frames to
  `ctl_endpoint` when given (an inproc PULL socket in the process's main
  loop), so the main loop acts on it in its own thread.

Bodies are JSON text; nothing is pickled.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from conf import common_pb2
from runtime.comm import security
from runtime.comm import socket as zsock
from runtime.comm.msg import Addr, Msg

log = logging.getLogger("singa.heartbeat")

HEARTBEAT_S = 1.0
MISSED = 3  # heartbeats missed before the peer counts as gone
MASTER = Addr.stub(-1)
PERIODIC_BEATS = 5  # periodic records every this many heartbeats


class MasterLink:
    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], procs: int, master: str, *,
                 keys: security.JobKeys | None = None,
                 step: Callable[[], int] = lambda: 0, ctl_endpoint: str | None = None,
                 on_master_lost: Callable[[str], None] | None = None):
        self.ctx = ctx
        self.procs = procs
        self.me = Addr.stub(procs)
        self.master = master
        self.keys = keys
        self.step = step
        self.ctl_endpoint = ctl_endpoint
        self.on_master_lost = on_master_lost or _exit_lost
        # records to report now and then (e.g. the servers' staleness), and at close()
        self.periodic: Callable[[], list[dict[str, Any]]] = lambda: []
        self.sock = zsock.dealer(ctx, f"procs{procs}".encode(), keys=keys)
        self.sock.connect(master)
        self._out: queue.SimpleQueue[Msg | None] = queue.SimpleQueue()  # None: a heartbeat
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed = threading.Event()  # the master has this process's kFail
        self.dropped = 0  # messages the master's full queue had no room for

    # -------------------------------------------------------------- start ---
    def connect(self, info: dict[str, Any], timeout: float = 120.0) -> dict[int, str]:
        """Register with the master and wait for the address book."""
        zsock.send(self.sock, Msg(self.me, MASTER, common_pb2.kConnect).add_bytes(json.dumps(info).encode()))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.sock.poll(int(HEARTBEAT_S * 1000)):
                continue
            got = zsock.recv(self.sock)
            if got is None:
                continue
            msg = got[1]
            if msg.type == common_pb2.kConnect:
                return {int(k): v for k, v in json.loads(msg.bytes(0)).items()}
            if msg.type == common_pb2.kStop:
                raise SystemExit(f"procs {self.procs}: the job master stopped the job before it started")
        raise SystemExit(f"procs {self.procs}: no address book from the job master at {self.master} "
                         f"within {timeout:.0f} s")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="master-link", daemon=True)
        self._thread.start()

    # ---------------------------------------------------- any thread's API ---
    def metric(self, record: dict[str, Any]) -> None:
        self._out.put(Msg(self.me, MASTER, common_pb2.kMetric).add_bytes(json.dumps(record).encode()))

    def done(self) -> None:
        """This process's workers have all finished (after a last heartbeat
        with the final step)."""
        self._out.put(None)
        self._out.put(Msg(self.me, MASTER, common_pb2.kStop))

    def fail(self, reason: str, timeout: float = 5.0) -> bool:
        """Tell the master why this process is ending; True once the master
        has it, False if it did not answer within `timeout` (its log is then
        the master's only source). Safe from any thread; the caller exits
        afterwards."""
        msg = Msg(self.me, MASTER, common_pb2.kFail).add_bytes(json.dumps({"reason": reason}).encode())
        if self._thread is not None and self._thread.is_alive():
            self._out.put(msg)
            return self._failed.wait(timeout)
        # no thread (not started, or gone): the caller may use the socket
        self._send(msg)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(100):
                got = zsock.recv(self.sock)
                if got is not None and got[1].type == common_pb2.kFail:
                    return True
        return False

    def close(self, timeout: float = 2.0) -> None:
        """Send the periodic records a last time and what is queued, then
        stop the thread and close the socket."""
        for rec in self.periodic():
            self.metric(rec)
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.sock.setsockopt(zmq.LINGER, int(timeout * 1000))  # what is sent still goes
        self.sock.close()

    # ------------------------------------------------------------- thread ---
    def _run(self) -> None:
        ctl = None
        if self.ctl_endpoint:
            ctl = self.ctx.socket(zmq.PUSH)
            ctl.setsockopt(zmq.LINGER, 0)
            ctl.connect(self.ctl_endpoint)
        heard = sent = time.monotonic()
        beats = 0
        self._send_heartbeat()
        try:
            while True:
                self._flush()
                if self._closing.is_set():
                    return
                if self.sock.poll(100):
                    got = zsock.recv(self.sock)
                    if got is not None:
                        heard = time.monotonic()
                        if got[1].type == common_pb2.kStop and ctl is not None:
                            zsock.send(ctl, got[1])
                        elif got[1].type == common_pb2.kFail:
                            self._failed.set()
                now = time.monotonic()
                if now - sent >= HEARTBEAT_S:
                    self._send_heartbeat()
                    sent = now
                    beats += 1
                    if beats % PERIODIC_BEATS == 0:
                        for rec in self.periodic():
                            self.metric(rec)
                if now - heard > MISSED * HEARTBEAT_S + 2:
                    self.on_master_lost(f"no word from the job master at {self.master} "
                                        f"for {now - heard:.0f} s")
                    return
        finally:
            if ctl is not None:
                ctl.close()

    def _send_heartbeat(self) -> None:
        body = json.dumps({"step": int(self.step())}).encode()
        self._send(Msg(self.me, MASTER, common_pb2.kHeartbeat).add_bytes(body))

    def _send(self, msg: Msg) -> None:
        # Never block: with the master gone the socket's queue fills up (a
        # metric every disp_freq steps) and a blocking send would stop this
        # thread before it sees that the master is gone. What cannot be
        # queued is dropped; a master that is there drains the queue.
        try:
            self.sock.send_multipart(msg.to_frames(), zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.dropped += 1

    def _flush(self) -> None:
        while True:
            try:
                msg = self._out.get_nowait()
            except queue.Empty:
                return
            if msg is None:
                self._send_heartbeat()
            else:
                self._send(msg)


def _exit_lost(why: str) -> None:
    # The master is the only one who stops this process's peers and records
    # the job's end; without it the job cannot finish, so stop at once rather
    # than train on as an orphan nobody can see or kill. The master cannot
    # remove the job's ipc directory now, so this process does. `singa view`
    # reads these words and this exit code (runtime.jobs.orphans).
    zsock.remove_ipc_dir()
    print(f"singa: {why}; stopping this process", flush=True)
    os._exit(3)
