"""The job master's judgement of one attempt, without sockets, processes or a
registry (sans-IO, like `runtime.ps.server.Server.handle`).

`JobMaster._serve` polls its ROUTER and the launched processes and feeds
what it sees to a `Supervisor`; the Supervisor answers with actions, which
the master carries out in order:

- `Send`: a message to a process (by its ROUTER identity);
- `Learned`: what a process said of itself in its kConnect (pid, pgid,
  start time, host), for its handle;
- `UpdateProc`: fields of a process's registry row (`beat`: with the
  wall-clock heartbeat of now);
- `Progress`: the job's step, loss, accuracy, samples/s;
- `Transition`: the job's new state (RUNNING once all have connected);
- `WriteMetric`: a metric record for the workspace's metrics file;
- `Verdict`: the attempt is over. When `proc` is set the attempt failed
  because of that process: the master words the reason from its handle
  (`words`, else the handle's account of exit status `exit`) unless the
  process said why itself (`said`, from its kFail).

The rules: every process connects (kConnect) within `connect_timeout` of
the start, and when all have, each gets the address book (the start
barrier). A process not heard from for MISSED heartbeats while it runs went
silent; silence is judged only when the master has read its whole queue
(`behind` False), so a master that fell behind does not blame processes
whose heartbeats wait in its own queue. When every process has said kStop,
all are told to stop; the attempt SUCCEEDED when then all exit 0. Any other
exit fails it.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from conf import common_pb2
from runtime.comm.heartbeat import HEARTBEAT_S, MISSED
from runtime.comm.msg import Addr, Msg
from runtime.jobs import jobdb

log = logging.getLogger("singa.master")

CONNECT_TIMEOUT_S = 120.0  # from launch to every process's kConnect
STEP_WRITE_S = 1.0          # registry writes of heartbeats, at most this often


@dataclass
class Outcome:
    state: str                 # SUCCEEDED, FAILED, KILLED, or RESTART (failed, restarts left)
    reason: str = ""


@dataclass
class Send:
    to: bytes                  # the process's ROUTER identity
    msg: Msg


@dataclass
class Learned:
    procs: int
    pid: int
    pgid: int
    start_time: float
    host: str | None           # the host it reported (an engine's processes say where they run)


@dataclass
class UpdateProc:
    procs: int
    fields: dict[str, Any]
    beat: bool = False         # also set its heartbeat to the wall clock of now


@dataclass
class Progress:
    step: int
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Transition:
    state: str


@dataclass
class WriteMetric:
    record: dict[str, Any]


@dataclass
class Verdict:
    state: str
    reason: str = ""
    procs: int | None = None   # the process to blame, if any
    words: str = ""            # how it ended, in words; empty: the handle words exit status `exit`
    exit: int | None = None
    said: str | None = None    # the reason it sent with kFail


Action = Send | Learned | UpdateProc | Progress | Transition | WriteMetric | Verdict


class Rate:
    """Steps per second over the last few heartbeats of process 0."""

    def __init__(self, window: int = 10):
        self.marks: list[tuple[float, int]] = []
        self.window = window

    def add(self, now: float, step: int) -> float | None:
        self.marks.append((now, step))
        self.marks = self.marks[-self.window:]
        (t0, s0), (t1, s1) = self.marks[0], self.marks[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None


def _to(p: int, type_: int) -> Msg:
    return Msg(Addr.stub(-1), Addr.stub(p), type_)


class Supervisor:
    """The state of one attempt of `n` processes, started at `now`.

    `samples_per_step` turns process 0's steps per second into the job's
    samples per second. Times are `time.monotonic()` seconds, given by the
    caller; nothing here reads a clock.
    """

    def __init__(self, n: int, now: float, samples_per_step: int = 0,
                 connect_timeout: float = CONNECT_TIMEOUT_S):
        self.n = n
        self.started = now
        self.samples_per_step = samples_per_step
        self.connect_timeout = connect_timeout
        self.book: dict[int, str] = {}       # procs -> its endpoint (the address book)
        self.idents: dict[int, bytes] = {}   # procs -> its ROUTER identity
        self.heard: dict[int, float] = {}    # procs -> when it was last heard
        self.steps: dict[int, int] = {}      # procs -> the step of its last heartbeat
        self.written: dict[int, float] = {}  # procs -> when its heartbeat was last written
        self.done: set[int] = set()          # the processes that sent kStop
        self.said: dict[int, str] = {}       # procs -> the reason it sent with kFail
        self.exited: dict[int, int] = {}     # procs -> its exit status (negative: signal)
        self.stopping = False
        self.rate = Rate()

    # ------------------------------------------------------------ exits ---
    def on_exit(self, p: int, code: int, now: float) -> list[Action]:
        """Process `p` has ended with status `code` (negative: killed by that
        signal). Only an exit 0 after the stop keeps the attempt going."""
        self.exited[p] = code
        if code == 0 and self.stopping:
            return []
        fields = {"state": jobdb.FAILED, "exit_code": code if code >= 0 else None,
                  "signal": -code if code < 0 else None}
        words = "" if code != 0 else "exited with code 0 before the job finished"
        return [UpdateProc(p, fields),
                Verdict("FAILED", procs=p, words=words, exit=code, said=self.said.get(p))]

    # ------------------------------------------------------------ timers ---
    def check(self, now: float, behind: bool = False) -> list[Action]:
        """What time alone decides: success once all stopped and exited 0, a
        process that never connected, a process gone silent. `behind`: the
        master's queue holds messages it has not read yet (silence is then
        not judged)."""
        if self.stopping and len(self.exited) == self.n and not any(self.exited.values()):
            return [*(UpdateProc(p, {"state": jobdb.SUCCEEDED, "exit_code": 0})
                      for p in range(self.n)), Verdict("SUCCEEDED")]
        if len(self.book) < self.n and now - self.started > self.connect_timeout:
            p = min(set(range(self.n)) - set(self.book))
            return [Verdict("FAILED", procs=p, words="did not connect to the job master within "
                                                     f"{self.connect_timeout:.0f} s")]
        if behind:
            return []
        for p, t in self.heard.items():
            if now - t > MISSED * HEARTBEAT_S and p not in self.exited:
                return [UpdateProc(p, {"state": jobdb.LOST}),
                        Verdict("FAILED", procs=p, words=f"went silent: no heartbeat for {now - t:.1f} s",
                                said=self.said.get(p))]
        return []

    # ---------------------------------------------------------- messages ---
    def on_message(self, ident: bytes, msg: Msg, now: float) -> list[Action]:
        """A message from the process that `msg.src.id` names, received at
        `now` from ROUTER identity `ident`."""
        p = msg.src.id
        if not 0 <= p < self.n:
            log.warning("dropped a message from unknown procs %d", p)
            return []
        self.heard[p] = now
        if msg.type == common_pb2.kConnect:
            return self._connect(p, ident, json.loads(msg.bytes(0)))
        if msg.type == common_pb2.kHeartbeat:
            return self._heartbeat(p, ident, int(json.loads(msg.bytes(0)).get("step", 0)), now)
        if msg.type == common_pb2.kMetric:
            rec = json.loads(msg.bytes(0))
            out: list[Action] = [WriteMetric(rec)]
            if rec.get("phase") in ("train", "test") and not rec.get("group"):
                # an energy model (CD) reports its reconstruction error instead
                loss = rec.get("loss", rec.get("squared_error"))
                out.append(Progress(int(rec.get("step", 0)),
                                    {"loss": loss, "accuracy": rec.get("accuracy")}))
            return out
        if msg.type == common_pb2.kFail:
            self.said[p] = str(json.loads(msg.bytes(0)).get("reason", "")).strip()
            # the answer lets the process exit: its exit is then blamed with its reason
            return [Send(ident, _to(p, common_pb2.kFail))]
        if msg.type == common_pb2.kStop:
            return self._stop(p)
        return []

    def _connect(self, p: int, ident: bytes, info: dict[str, Any]) -> list[Action]:
        self.idents[p] = ident
        self.book[p] = info.get("endpoint", "")
        out: list[Action] = [
            Learned(p, info["pid"], info["pgid"], info["start_time"], info.get("host")),
            UpdateProc(p, {"state": jobdb.RUNNING, "pid": info["pid"], "pgid": info["pgid"],
                           "start_time": info["start_time"], "endpoint": self.book[p]}, beat=True)]
        if len(self.book) == self.n:  # the start barrier: everyone gets the address book
            body = json.dumps(self.book).encode()
            out += [Send(who, _to(q, common_pb2.kConnect).add_bytes(body))
                    for q, who in self.idents.items()]
            out.append(Transition(jobdb.RUNNING))
        return out

    def _heartbeat(self, p: int, ident: bytes, step: int, now: float) -> list[Action]:
        self.steps[p] = step
        out: list[Action] = [Send(ident, _to(p, common_pb2.kHeartbeat))]
        if now - self.written.get(p, 0.0) >= STEP_WRITE_S:
            self.written[p] = now
            out.append(UpdateProc(p, {"step": step}, beat=True))
            if p == 0:
                sps = self.rate.add(now, step)
                out.append(Progress(step, {"samples_per_s": (
                    sps * self.samples_per_step if sps is not None else None)}))
        return out

    def _stop(self, p: int) -> list[Action]:
        self.done.add(p)
        out: list[Action] = []
        if p in self.steps:
            out.append(UpdateProc(p, {"step": self.steps[p]}, beat=True))
            if p == 0:  # its last heartbeat (just before) carried its final step
                out.append(Progress(self.steps[p]))
        if len(self.done) == self.n and not self.stopping:
            self.stopping = True
            out += [Send(who, _to(q, common_pb2.kStop)) for q, who in self.idents.items()]
        return out
