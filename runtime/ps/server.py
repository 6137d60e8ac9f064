"""Server: one server (group g, id s) of SINGA, holding param slices and applying updates.

A server keeps the slices `SlicePlan.slices_on(s)` of a full param replica
(every server group holds every slice), applies the `Updater` to them when
a worker group's gradients are complete, answers reads, and, in a
non-master group, syncs its slices with their master group (Distributed
Hogwild). The logic is `handle(msg) -> [msgs to send]`, free of sockets;
`run(sock)` is the poll loop that feeds it from a zmq socket.

Protocol (header fields `param` = param id, `slice` = global slice id as in
the `SlicePlan`, `version`; every data frame is a raw float32 buffer of the
slice's size; meta frames are little-endian structs, packed and read by
`runtime.comm.msg`, which owns the wire format):

| in            | frames                            | version   | effect / reply                            |
|---------------|-----------------------------------|-----------|-------------------------------------------|
| kPut          | [values, PUT_META "<iff"          | the slice | create the slice; no reply. A second Put  |
|               |  (num_total, lr_scale, wd_scale)] | version   | of a slice is logged and ignored.         |
| kGet          | []                                | v wanted  | kRGet [values] (version = the slice's)    |
|               |                                   |           | once the slice's version >= v             |
| kUpdate       | [grad, UPDATE_META "<ii"          | the step  | see below; kRUpdate [values] (version =   |
|               |  (num_update, base_version)]      |           | the new version) to every sender          |
| kSyncRequest  | [delta]                           | sender's  | master: cur += delta; kSyncResponse       |
|               |                                   | version   | [values] (version = the master's)         |
| kSyncResponse | [master values]                   | master's  | cur += master - last_sync; last_sync = cur|
| kStop         | []                                |           | stop; kStop back to the sender (an ack)   |

Updates. `msg.version` of a kUpdate is the training step (as in SINGA: the
learning-rate schedule reads it) and the meta frame carries `num_update`
(how many of the group's param replicas this grad sums; a stub that sums
its local replicas sends their count) and `base_version`, the param version
the worker computed the grad on (the version of the kRGet/kRUpdate it last
received). A 4-byte meta "<i" (num_update only) is accepted; that update
then has no staleness. Updates are buffered per worker group, keyed by
`msg.src.grp` (a stub forwarding a group's update must send from
`Addr(g, procs, kStub)` with g the worker group): when the num_update of a
group's buffered messages reaches `num_total` (from the Put), their grads
are summed and applied with `updater.apply(step, f"{param}:{slice}", data,
sum, lr_scale, wd_scale, grad_scale=1/num_total)`, the version goes up by
one and each sender gets kRUpdate. So updates are synchronous and averaged
within a worker group and asynchronous across groups. The staleness of an
applied update is the slice version before it minus the oldest base_version
in it; `stats()` reports it per worker group.

Held messages. A Get/Update/SyncRequest/SyncResponse for a slice not yet Put
is held and handled, in arrival order, right after the Put (SINGA re-queues
it). A Get for a version not reached yet is answered after the update that
reaches it.

Server-group sync (reference §5.5). A slice's master group is
`plan.slice2group[slice]`. In any other group, after each applied update of
the slice: if `n_updates >= sync_freq` and `n_pending_sync <= sync_freq`,
send kSyncRequest [cur - last_sync] to `plan.master_of(slice)` and set
last_sync = cur. The master adds the delta and replies with its values; the
requester sets `cur += master - last_sync; last_sync = cur`, i.e. cur =
master + the local changes since the request. Versions are not changed by a
sync. Server-to-server messages leave `run`'s socket like any other: the
stub routes them by `dst`.

Checked and dropped (logged, counted in stats()["dropped"], never raised):
frames that are not a message, a `dst` other than this server, a slice not
in the plan or not on this server, a param id that does not own the slice,
frames of the wrong size or missing, unknown message types.

Differences from SINGA v0.3: SINGA buffers the updates of a slice in one
list whatever group they come from, so two asynchronous groups can mix
into one update (and trip its CHECK_EQ); here each group's update is
buffered and applied separately. A second Put is ignored (SINGA aborts).

Concurrency contract: a Server object is driven by one thread, the one
calling `handle` (or `run`, which calls it); nothing in it is locked.
`request_stop()` and `stats()` may be called from any thread (`stats` reads
counters that may be one message behind). `state()`/`load_state()` belong to
the driving thread, or to any thread while no `run` is active; call
`load_state` before the first message. A reply's values are those of the
version it names, for as long as the reply (or any array or frame taken
from it) lives: replies carry a read-only view of the slice's array (one
per version, shared by its replies) and the server writes that array in
place only when nothing outside holds the view any more (CPython reference
count); otherwise it first moves the slice to a fresh copy (copy on write).
A 4 MB slice is then sent and updated with no copy at all in the steady
state, where zmq has released the previous reply before the next update
arrives, and never changes under a reply still in flight. The grads of a
round are summed in one pass when its last one arrives: until then the
earlier ones are held as views of their frames, so a sender must not change
a grad it has sent before its reply (workers wait in `collect`).
The updater must be this server's own (its keys "param:slice" repeat in
every server group). Who sends what: workers, through their stub, send
Put/Get/Update and receive kRGet/kRUpdate; the driver sends kStop; servers
of non-master groups send kSyncRequest to master servers, which answer with
kSyncResponse.
"""
from __future__ import annotations

import logging
import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from conf import common_pb2 as pb
from runtime import checkpoint
from runtime.comm.msg import (
    Addr,
    Msg,
    MsgError,
    envelope,
    read_put_meta,
    read_update_meta,
    readable,
    recv_frames,
    send_frames,
)
from runtime.errors import UserError
from runtime.model.updater import Updater
from runtime.ps.param_slice import SlicePlan
from runtime.train.divergence import check_update

log = logging.getLogger(__name__)

_NAMES = {v: k for k, v in pb.MsgType.items()}


@dataclass
class _Round:
    """One worker group's update of a slice, until all its replicas have reported."""

    count: int = 0
    senders: list[Addr] = field(default_factory=list)
    base: int | None = None
    step: int = 0
    acc: np.ndarray | None = None  # the sum of grads, kept between rounds
    held: np.ndarray | None = None  # the round's first grad (a view of its frame)


@dataclass
class _Slice:
    param: int
    id: int
    data: np.ndarray
    version: int
    num_total: int
    lr_scale: float
    wd_scale: float
    last_sync: np.ndarray | None  # non-master slices only: values at the last sync
    n_updates: int = 0            # updates since the last sync request
    n_pending_sync: int = 0       # sync requests without a response
    rounds: dict[int, _Round] = field(default_factory=dict)
    gets: list[Msg] = field(default_factory=list)  # Gets for a version not reached
    lent: np.ndarray | None = None  # read-only view of data at `version`, in replies

    @property
    def key(self) -> str:
        return f"{self.param}:{self.id}"


@dataclass
class _Staleness:
    updates: int = 0
    total: int = 0
    max: int = 0


class Server:
    """Server `sid` of server group `grp` (see the module docstring for the protocol)."""

    def __init__(self, grp: int, sid: int, updater: Updater, plan: SlicePlan,
                 sync_freq: int | None = None, poll_time: int | None = None):
        cluster = plan.cluster
        if not (0 <= grp < cluster.nserver_groups and 0 <= sid < cluster.nservers_per_group):
            raise ValueError(f"server ({grp}, {sid}) is not in this cluster "
                             f"({cluster.nserver_groups} groups of {cluster.nservers_per_group})")
        self.grp, self.sid = grp, sid
        self.addr = Addr.server(grp, sid)
        self.updater = updater
        self.plan = plan
        self.sync_freq = cluster.sync_freq if sync_freq is None else sync_freq
        self.poll_time = cluster.poll_time if poll_time is None else poll_time
        self.stopped = False
        self._save_ws, self._save_group = "", 0  # see save_at
        self._save_due: Callable[[int], bool] | None = None
        self._pending_saves: dict[int, dict[int, dict[str, np.ndarray]]] = {}  # step -> slice -> state
        self._resumed: set[int] = set()  # slices loaded by load_state, not yet Put
        self._slices: dict[int, _Slice] = {}
        self._early: dict[int, list[Msg]] = {}  # slice id -> messages before its Put
        self._staleness: dict[int, _Staleness] = {}
        self._counts = {"updates": 0, "dropped": 0, "ignored_puts": 0, "sync_sent": 0,
                        "sync_served": 0, "sync_applied": 0}
        self._halt = threading.Event()
        self._handlers = {pb.kPut: self._on_put, pb.kGet: self._on_get,
                          pb.kUpdate: self._on_update, pb.kSyncRequest: self._on_sync_request,
                          pb.kSyncResponse: self._on_sync_response, pb.kStop: self._on_stop}

    # ------------------------------------------------------------ public ---
    def handle(self, msg: Msg) -> list[Msg]:
        """Process one message; return the messages to send (never raises on bad input)."""
        if msg.dst != self.addr:
            return self._drop(msg, f"addressed to {msg.dst!r}, not to this server")
        handler = self._handlers.get(msg.type)
        if handler is None:
            return self._drop(msg, f"{_NAMES.get(msg.type, msg.type)} is not a server message")
        if msg.type != pb.kStop:
            why = self._misrouted(msg)
            if why:
                return self._drop(msg, why)
            if msg.type != pb.kPut and msg.slice not in self._slices:
                self._early.setdefault(msg.slice, []).append(msg)
                return []
        return self._dispatch(handler, msg)

    def run(self, sock: zmq.Socket[bytes]) -> None:
        """Serve messages from `sock` until kStop or `request_stop()`.

        `sock` is a DEALER (or PAIR) whose peer routes by `dst`, normally the
        stub's ROUTER: every frame list is one message or an envelope of
        several (`runtime.comm.msg.split`), handled in order; the replies
        to one destination that a frame list causes leave as one envelope.
        A ROUTER is accepted too: replies go to the identity a destination
        was last heard from, and messages to a destination never heard from
        are dropped with an error. Frames that are not a message are logged
        and dropped. Waits at most `poll_time` ms at a time, so a stop
        request is seen within that time.
        Any other exception (an updater error, a bug) ends the loop and
        propagates to the caller, which reports the failure.
        """
        router = sock.type == zmq.ROUTER
        peers: dict[Addr, bytes] = {}
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        log.info("%r serving", self)
        while not self.stopped and not self._halt.is_set():
            if not poller.poll(self.poll_time):
                continue
            # the message polled for, then those queued meanwhile, without a
            # poll each
            while True:
                self._serve_one(sock, router, peers)
                if self.stopped or not readable(sock):
                    break
        log.info("%r stopped: %s", self, self.stats())

    def _serve_one(self, sock: zmq.Socket[bytes], router: bool, peers: dict[Addr, bytes]) -> None:
        # A method of its own, so that no message or reply stays bound to a
        # variable of the loop: a reply still referenced would cost a copy
        # of its slice at the next update.
        frames = recv_frames(sock)
        ident = b""
        if router:
            ident, frames = bytes(frames[0].bytes), frames[1:]
        try:
            msgs = Msg.all_from_frames(frames)  # a message, or an envelope of several
        except MsgError as e:
            self._counts["dropped"] += 1
            log.warning("%r: dropped %d frames that are not a message: %s", self, len(frames), e)
            return
        # the replies to one destination go as one envelope, in order
        out: dict[Addr, list[Msg]] = {}
        for msg in msgs:
            if router:
                peers[msg.src] = ident
            for reply in self.handle(msg):
                out.setdefault(reply.dst, []).append(reply)
        for replies in out.values():
            self._send(sock, replies, peers if router else None)

    def request_stop(self) -> None:
        """Make `run` return within poll_time ms (any thread)."""
        self._halt.set()

    def stats(self) -> dict[str, Any]:
        """Counters: updates applied, drops, syncs, held messages, staleness per worker group.

        {"updates", "dropped", "ignored_puts", "sync_sent", "sync_served",
         "sync_applied", "held", "slices",
         "groups": {worker group: {"updates", "mean_staleness", "max_staleness"}}}
        """
        out: dict[str, Any] = dict(self._counts)
        out["slices"] = len(self._slices)
        out["held"] = (sum(len(v) for v in list(self._early.values()))
                       + sum(len(e.gets) for e in list(self._slices.values())))
        out["groups"] = {g: {"updates": s.updates,
                             "mean_staleness": s.total / s.updates if s.updates else 0.0,
                             "max_staleness": s.max}
                         for g, s in sorted(self._staleness.items())}
        return out

    def state(self) -> dict[str, np.ndarray]:
        """Everything to resume this server, as name -> array (copies).

        For each slice key "p:s": "data/p:s" (float32), "version/p:s" (int64
        [v]), "meta/p:s" (float64 [num_total, lr_scale, wd_scale]) and, in a
        non-master group, "last_sync/p:s"; plus "updater/<name>" for each entry
        of the updater's state. Updates in progress and held messages are not
        included: workers resend after a restart.
        """
        out: dict[str, np.ndarray] = {}
        for sid in sorted(self._slices):
            out.update(self._slice_state(self._slices[sid]))
        return out

    def _slice_state(self, e: _Slice) -> dict[str, np.ndarray]:
        """`state()` of one slice (copies)."""
        out = {f"data/{e.key}": e.data.copy(),
               f"version/{e.key}": np.array([e.version], dtype=np.int64),
               f"meta/{e.key}": np.array([e.num_total, e.lr_scale, e.wd_scale], dtype=np.float64)}
        if e.last_sync is not None:
            out[f"last_sync/{e.key}"] = e.last_sync.copy()
        for name, arr in self.updater.state([e.key]).items():
            out[f"updater/{name}"] = arr
        return out

    def save_at(self, workspace: str, due: Callable[[int], bool], wgrp: int) -> None:
        """Write `state()` as `checkpoint.server_state_path(workspace, N, ...)`
        whenever worker group `wgrp` (the one whose first worker checkpoints)
        completes a step N with `due(N)`: each slice's state is taken right
        after that group's update of step N-1, so the file matches the
        worker's checkpoint of step N, taken once it collected those
        updates. `--resume` loads it (`load_state`), so the updater's history
        (momentum, Adam's moments) carries on."""
        self._save_ws, self._save_due, self._save_group = workspace, due, wgrp

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore the slices and updater state that `state()` gave (before any message).

        A slice in `state` replaces this server's entry for it; a name that
        does not fit the plan (another net or topology) raises UserError.
        """
        parts: dict[str, dict[str, np.ndarray]] = {}
        upd: dict[str, np.ndarray] = {}
        for name, arr in state.items():
            kind, sep, rest = name.partition("/")
            if kind == "updater" and sep:
                upd[rest] = arr
            elif kind in ("data", "version", "meta", "last_sync") and sep:
                parts.setdefault(rest, {})[kind] = np.asarray(arr)
            else:
                raise UserError(f"server state: unknown entry {name!r} (expected data/, "
                                "version/, meta/, last_sync/ or updater/ names)")
        loaded: dict[int, _Slice] = {}
        for key, p in parts.items():
            missing = [k for k in ("data", "version", "meta") if k not in p]
            if missing:
                raise UserError(f"server state: slice {key!r} lacks {', '.join(missing)}")
            try:
                param, sid = (int(x) for x in key.split(":"))
            except ValueError:
                raise UserError(f"server state: slice key {key!r} is not 'param:slice'") from None
            data = np.array(p["data"], dtype=np.float32).reshape(-1)
            info = self.plan.slices[sid] if 0 <= sid < len(self.plan.slices) else None
            if info is None or info.param != param or info.size != data.size:
                want = "not in the plan" if info is None else \
                    f"param {info.param} with {info.size} values in the plan"
                raise UserError(f"server state: slice {key!r} of {data.size} values does not "
                                f"match this job's slicing (slice {sid} is {want}); was it saved "
                                "with another net or cluster topology?")
            num_total, lr_scale, wd_scale = (float(x) for x in p["meta"].reshape(-1)[:3])
            last = p.get("last_sync")
            master = info.group == self.grp
            loaded[sid] = _Slice(param, sid, data, int(p["version"].reshape(-1)[0]),
                                 int(num_total), lr_scale, wd_scale,
                                 None if master else
                                 (data.copy() if last is None
                                  else np.array(last, dtype=np.float32).reshape(-1)))
        self._slices.update(loaded)
        self._resumed.update(loaded)
        if upd:
            self.updater.load_state(upd)

    # ---------------------------------------------------------- handlers ---
    def _on_put(self, msg: Msg) -> list[Msg]:
        values = msg.array(0)
        num_total, lr_scale, wd_scale = read_put_meta(msg.bytes(1))
        info = self.plan.slices[msg.slice]
        if values.size != info.size:
            raise MsgError(f"{values.size} values, expected {info.size} for slice {msg.slice}")
        if num_total < 1:
            raise MsgError(f"num_total {num_total}, expected >= 1")
        if msg.slice in self._resumed:
            self._resumed.discard(msg.slice)  # the values of the saved state stand
            return []
        if msg.slice in self._slices:
            self._counts["ignored_puts"] += 1
            log.warning("%r: slice %d put again by %r; keeping the first values", self,
                        msg.slice, msg.src)
            return []
        data = np.array(values, dtype=np.float32)  # our own, writable copy
        master = info.group == self.grp
        self._slices[msg.slice] = _Slice(msg.param, msg.slice, data, msg.version, num_total,
                                         lr_scale, wd_scale, None if master else data.copy())
        log.debug("%r: put slice %d (param %d, %d values, v%d, %d replicas)", self, msg.slice,
                  msg.param, data.size, msg.version, num_total)
        out: list[Msg] = []
        for early in self._early.pop(msg.slice, []):
            out += self.handle(early)
        return out

    def _on_get(self, msg: Msg) -> list[Msg]:
        e = self._slices[msg.slice]
        if e.version < msg.version:
            e.gets.append(msg)
            return []
        return [self._values(e, msg.src, pb.kRGet)]

    def _on_update(self, msg: Msg) -> list[Msg]:
        e = self._slices[msg.slice]
        grad = msg.array(0)
        num_update, base = read_update_meta(msg.bytes(1))
        if grad.size != e.data.size:
            raise MsgError(f"grad of {grad.size} values, expected {e.data.size} for slice {e.id}")
        if num_update < 1:
            raise MsgError(f"num_update {num_update}, expected >= 1")
        rnd = e.rounds.setdefault(msg.src.grp, _Round())
        rnd.senders.append(msg.src)
        rnd.step = msg.version
        if base is not None:
            rnd.base = base if rnd.base is None else min(rnd.base, base)
        first = rnd.count == 0
        rnd.count += num_update
        if first and rnd.count >= e.num_total:
            total = grad  # one message carries the whole group: no copy
        elif first:
            rnd.held = grad  # summed with the next one, in one pass over memory
            return []
        else:
            if rnd.acc is None:
                rnd.acc = np.empty_like(e.data)
            if rnd.held is not None:
                np.add(rnd.held, grad, out=rnd.acc)
                rnd.held = None
            else:
                rnd.acc += grad
            if rnd.count < e.num_total:
                return []
            total = rnd.acc
        if rnd.count > e.num_total:
            log.warning("%r: slice %d got %d replicas' grads from worker group %d, expected %d",
                        self, e.id, rnd.count, msg.src.grp, e.num_total)
        return self._apply(e, msg.src.grp, rnd, total)

    def _apply(self, e: _Slice, wgrp: int, rnd: _Round, grad: np.ndarray) -> list[Msg]:
        self._writable(e)
        self.updater.apply(rnd.step, e.key, e.data, grad, e.lr_scale, e.wd_scale,
                           1.0 / e.num_total)
        # a non-finite slice would go out to every worker: the server's
        # process fails instead (Diverged propagates out of `run`)
        check_update(self.plan.names[e.param], e.version + 1, e.data)
        if rnd.base is not None:
            stale = e.version - rnd.base
            s = self._staleness.setdefault(wgrp, _Staleness())
            s.updates += 1
            s.total += stale
            s.max = max(s.max, stale)
            log.debug("%r: slice %d v%d -> v%d by worker group %d at step %d, staleness %d",
                      self, e.id, e.version, e.version + 1, wgrp, rnd.step, stale)
        e.version += 1
        self._counts["updates"] += 1
        if self._save_due is not None and wgrp == self._save_group and self._save_due(rnd.step + 1):
            self._save_slice(e, rnd.step + 1)
        out = [self._values(e, src, pb.kRUpdate) for src in rnd.senders]
        rnd.count, rnd.senders, rnd.base = 0, [], None
        waiting, e.gets = e.gets, []
        for g in waiting:
            if e.version >= g.version:
                out.append(self._values(e, g.src, pb.kRGet))
            else:
                e.gets.append(g)
        if e.last_sync is not None:
            e.n_updates += 1
            if e.n_updates >= self.sync_freq and e.n_pending_sync <= self.sync_freq:
                delta = e.data - e.last_sync
                np.copyto(e.last_sync, e.data)
                e.n_updates = 0
                e.n_pending_sync += 1
                self._counts["sync_sent"] += 1
                out.append(Msg(self.addr, self.plan.master_of(e.id), pb.kSyncRequest,
                               e.param, e.id, e.version).add_array(delta))
        return out

    def _on_sync_request(self, msg: Msg) -> list[Msg]:
        e = self._slices[msg.slice]
        delta = msg.array(0)
        if delta.size != e.data.size:
            raise MsgError(f"delta of {delta.size} values, expected {e.data.size} for slice {e.id}")
        if e.last_sync is not None:
            log.warning("%r: sync request for slice %d from %r, but group %d is its master",
                        self, e.id, msg.src, self.plan.slices[e.id].group)
        self._writable(e)
        e.data += delta
        self._counts["sync_served"] += 1
        return [self._values(e, msg.src, pb.kSyncResponse)]

    def _on_sync_response(self, msg: Msg) -> list[Msg]:
        e = self._slices[msg.slice]
        master = msg.array(0)
        if master.size != e.data.size:
            raise MsgError(f"values of {master.size}, expected {e.data.size} for slice {e.id}")
        if e.last_sync is None:
            raise MsgError(f"slice {e.id} is mastered by this group; it never asks for a sync")
        self._writable(e)
        e.data += master - e.last_sync  # cur = master + local changes since the request
        np.copyto(e.last_sync, e.data)
        e.n_pending_sync = max(0, e.n_pending_sync - 1)
        self._counts["sync_applied"] += 1
        return []

    def _on_stop(self, msg: Msg) -> list[Msg]:
        self.stopped = True
        return [Msg(self.addr, msg.src, pb.kStop)]

    # --------------------------------------------------------- internals ---
    def _dispatch(self, handler: Callable[[Msg], list[Msg]], msg: Msg) -> list[Msg]:
        try:
            return handler(msg)
        except (MsgError, struct.error, IndexError) as e:
            return self._drop(msg, str(e) or type(e).__name__)

    def _misrouted(self, msg: Msg) -> str:
        if not 0 <= msg.slice < len(self.plan.slices):
            return f"slice {msg.slice} is not in the plan ({len(self.plan.slices)} slices)"
        info = self.plan.slices[msg.slice]
        if info.param != msg.param:
            return f"slice {msg.slice} belongs to param {info.param}, not {msg.param}"
        if info.server != self.sid:
            return f"slice {msg.slice} lives on server {info.server} of each group, not {self.sid}"
        return ""

    def _drop(self, msg: Msg, why: str) -> list[Msg]:
        self._counts["dropped"] += 1
        log.warning("%r: dropped %r: %s", self, msg, why)
        return []

    def _values(self, e: _Slice, dst: Addr, mtype: int) -> Msg:
        if e.lent is None:
            e.lent = e.data.view()
            e.lent.flags.writeable = False
        return Msg(self.addr, dst, mtype, e.param, e.id, e.version).add_array(e.lent)

    def _save_slice(self, e: _Slice, step: int) -> None:
        """Keep slice `e`'s state for the file of `step`; write the file
        once every slice of this server is in (see `save_at`)."""
        pending = self._pending_saves.setdefault(step, {})
        pending[e.id] = self._slice_state(e)
        if len(pending) < len(self._slices):
            return
        del self._pending_saves[step]
        state = {k: v for part in pending.values() for k, v in part.items()}
        try:
            checkpoint.save_arrays(
                checkpoint.server_state_path(self._save_ws, step, self.grp, self.sid), state)
        except UserError as err:
            # the workers' checkpoint fails the job on a full disk; a resume
            # without this file only loses the updater's history
            log.error("%r: %s", self, err)

    @staticmethod
    def _writable(e: _Slice) -> None:
        """Make `e.data` safe to write in place: the replies of its version see
        no change (see the concurrency contract in the module doc)."""
        lent, e.lent = e.lent, None
        # Every holder of a reply (a Msg, a frame zmq has not sent yet, an
        # array from Msg.array) keeps a reference to `lent`; ours are the
        # local name and getrefcount's argument.
        if lent is not None and sys.getrefcount(lent) > 2:
            e.data = e.data.copy()

    def _send(self, sock: zmq.Socket[bytes], msgs: list[Msg], peers: dict[Addr, bytes] | None) -> None:
        """Send messages to one destination, as one envelope."""
        frames = envelope(msgs)
        dst = msgs[0].dst
        if peers is not None:
            ident = peers.get(dst)
            if ident is None:
                for msg in msgs:
                    log.error("%r: no route to %r for %r (a ROUTER socket only answers peers it "
                              "has heard from)", self, dst, msg)
                return
            frames = [ident, *frames]
        try:
            send_frames(sock, frames)
        except zmq.ZMQError as e:
            for msg in msgs:
                log.error("%r: could not send %r: %s", self, msg, e)

    def __repr__(self) -> str:
        return f"Server({self.grp},{self.sid}: {len(self._slices)} slices)"
