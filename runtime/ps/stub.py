"""Stub: the router of one runtime process, and the workers' parameter channel.

Every process of a job runs one stub (in its main thread, as in SINGA) plus
its worker and server threads. Local threads talk to the stub over
`inproc://` DEALER sockets whose identity is their address; other processes'
stubs connect to its ROUTER over `ipc://` (same host) or `tcp://`.

What the stub does with a message (by its destination):
- for a server of this process: hand it to that server's socket;
- for an entity of another process: forward it to that process's stub;
  both without building a `Msg`: the header is checked and read for its
  destination, and the frames go on as they came (no copy, no re-framing);
- for this stub: the parameter traffic of local workers (kPut, kGet) and
  the servers' replies (kRGet, kRUpdate), which carry fresh slice values:
  the stub copies them into the local replicas' shared memory and, once
  every slice of the param has arrived, sets the param's version, which
  releases `collect`.

Updates (SINGA's aggregation) are formed by the workers' channels, in the
thread of the last local replica of a param of one worker group to report:
the grads of the local replicas are summed, sliced (`SlicePlan`) and sent,
addressed to the servers of the group's server group with `num_update` = the
number of local replicas, through the stub, which only routes them. So the
stub's thread does no arithmetic on the critical path of a step.

Concurrency contract: the stub loop is the only thread that reads the
sockets and writes param values after training starts. A worker thread
calls `StubChannel.update` after computing a param's gradient and must not
touch that param (or its grad) again until `collect` returns for it;
`collect` waits on the entry's condition. `ParamEntry` fields are guarded by
that condition.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from conf import common_pb2
from runtime.cluster import Cluster
from runtime.comm import socket as zsock
from runtime.comm.msg import (
    Addr,
    Msg,
    MsgError,
    pack_header,
    parse_header,
    put_meta,
    readable,
    recv_frames,
    send_frames,
    split,
    update_meta,
)
from runtime.model.param import Param
from runtime.ps.param_slice import SliceInfo, SlicePlan

if TYPE_CHECKING:
    from runtime.comm.security import JobKeys

log = logging.getLogger(__name__)

# Bound of the route cache: addresses come from the wire, and a foreign peer
# must not grow it without limit.
_ROUTES_MAX = 4096
_REPLIES = (common_pb2.kRGet, common_pb2.kRUpdate)


def identity(addr: Addr) -> bytes:
    return repr(addr).encode()


@dataclass
class ParamEntry:
    """The local replicas of one owner param of one worker group."""

    grp: int
    pid: int
    shares: list[Param]
    num_total: int
    num_update: int = 0
    slices_received: int = 0
    round_version: int = -1       # the oldest slice version of the replies so far
    grad_sum: np.ndarray | None = None
    base_version: int = 0
    next_get: int = -1            # the highest version already asked for (dedupe)
    wids: list[int] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    # (slice, its server) of each slice of the param, once known
    targets: list[tuple[SliceInfo, Addr]] | None = None

    @property
    def num_local(self) -> int:
        return len(self.shares)

    @property
    def owner(self) -> Param:
        return self.shares[0]


class Stub:
    """The stub of process `procs`: routing and aggregation (see the module doc)."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], cluster: Cluster, procs: int,
                 transport: str = "ipc", host: str = "127.0.0.1",
                 keys: JobKeys | None = None):
        self.ctx = ctx
        self.keys = keys  # the job's JobKeys across hosts (CURVE), None on one host
        self.cluster = cluster
        self.procs = procs
        self.addr = Addr.stub(procs)
        self.router = zsock.router(ctx, keys)
        self.inproc = zsock.bind(self.router, "inproc", name=f"stub{procs}")
        self.endpoint = zsock.bind(self.router, transport, host=host, name=f"stub{procs}")
        self.peers: dict[int, str] = {}            # procs -> endpoint (the address book)
        self._dealers: dict[int, zmq.Socket[bytes]] = {}  # lazily connected to other stubs
        self.entries: dict[tuple[int, int], ParamEntry] = {}
        self._routes: dict[tuple[int, int, int], tuple[zmq.Socket[bytes] | None, bytes | None]] = {}
        self._reg_lock = threading.Lock()
        self.plan: SlicePlan | None = None
        self.local_workers = list(cluster.workers_of_procs(procs))
        self.local_servers = list(cluster.servers_of_procs(procs))
        self._stopped_workers: set[Addr] = set()
        self.on_workers_done: Callable[[], None] | None = None  # every local worker sent kStop
        self.running = False
        self.stopping = False
        self._stopped_servers = 0
        # other sockets the loop serves: (socket, handler(msg))
        self.watch: list[tuple[zmq.Socket[bytes], Callable[[Msg], None]]] = []
        # kData for a local worker's bridge layers (runtime.ps.group.BridgeHub.deliver)
        self.on_data: Callable[[Msg], None] | None = None

    # ------------------------------------------------------------ setup ---
    def register(self, grp: int, wid: int, params: list[Param], num_total: int | Sequence[int],
                 pids: Sequence[int] | None = None) -> None:
        """Register one local worker's owned params (same order in every worker).
        Thread-safe; call `link()` once every local worker has registered.
        A partitioned group (runtime.ps.group) gives each param its id in the
        group's param list (`pids`) and its number of replicas in the group
        (`num_total`, one per param); by default the ids are the positions
        and every param has `num_total` replicas."""
        with self._reg_lock:
            if self.plan is None:
                self.plan = SlicePlan([(p.name, p.size) for p in params], self.cluster)
            totals = [num_total] * len(params) if isinstance(num_total, int) else list(num_total)
            for pid, p, total in zip(range(len(params)) if pids is None else pids, params, totals,
                                      strict=False):
                key = (grp, pid)
                entry = self.entries.get(key)
                if entry is None:
                    self.entries[key] = entry = ParamEntry(grp, pid, [], total)
                entry.shares.append(p)
                entry.wids.append(wid)

    def link(self) -> None:
        """Make the local replicas of each param share the values of the
        lowest worker id's (as SINGA's partitions share partition 0's); with
        `share_memory` the worker groups of this process share one copy too
        (in-memory Hogwild: every group's fresh values land in it)."""
        first: dict[int, ParamEntry] = {}
        for (_grp, pid), entry in sorted(self.entries.items()):
            order = sorted(range(len(entry.shares)), key=entry.wids.__getitem__)
            entry.shares = [entry.shares[i] for i in order]
            entry.wids = [entry.wids[i] for i in order]
            if self.cluster.share_memory:
                head = first.setdefault(pid, entry)
                entry.shares[0].data = head.owner.data
            for q in entry.shares[1:]:
                q.data = entry.owner.data

    def channel(self, grp: int, wid: int) -> StubChannel:
        return StubChannel(self, grp, wid)

    # ------------------------------------------------------------ route ---
    def procs_of(self, addr: Addr) -> int:
        if addr.kind == common_pb2.kStub:
            return addr.id
        if addr.kind == common_pb2.kServer:
            return self.cluster.procs_of_server(addr.grp, addr.id)
        return self.cluster.procs_of_worker(addr.grp, addr.id)

    def _remote(self, procs: int) -> zmq.Socket[bytes]:
        d = self._dealers.get(procs)
        if d is None:
            d = self._dealers[procs] = self.dealer_to(procs, identity(self.addr))
        return d

    def dealer_to(self, procs: int, ident: bytes) -> zmq.Socket[bytes]:
        """A new DEALER connected to the stub of process `procs`, with
        `ident` as its identity (unique among that stub's peers), for the
        calling thread only: the stub's own, and each worker channel's for
        its updates."""
        d = zsock.dealer(self.ctx, ident, self.keys)
        d.connect(self.peers[procs])
        return d

    def _route(self, grp: int, id: int, kind: int) -> tuple[zmq.Socket[bytes] | None, bytes | None]:
        """Where a message to (grp, id, kind) goes: (socket, ROUTER identity
        or None); (None, None) for this stub or a local worker. Raises
        ValueError/KeyError for an address of no process of the job."""
        key = (grp, id, kind)
        route = self._routes.get(key)
        if route is None:
            dst = Addr(grp, id, kind)
            p = self.procs_of(dst)
            if p != self.procs:
                route = (self._remote(p), None)
            elif kind == common_pb2.kServer:
                route = (self.router, identity(dst))
            else:
                route = (None, None)
            if len(self._routes) < _ROUTES_MAX:
                self._routes[key] = route
        return route

    def send(self, msg: Msg) -> None:
        """Deliver `msg` by its destination."""
        sock, ident = self._route(msg.dst.grp, msg.dst.id, msg.dst.kind)
        if sock is None:
            self.handle(msg)
        else:
            zsock.send(sock, msg, to=ident)

    # ------------------------------------------------------------- loop ---
    def run(self) -> None:
        """Serve until `stop()`; malformed frames are logged and dropped."""
        self.running = True
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        handlers = {}
        for sock, handler in self.watch:
            poller.register(sock, zmq.POLLIN)
            handlers[sock] = handler
        router = self.router
        while self.running:
            for sock, _ in poller.poll(self.cluster.poll_time):
                if sock is router:
                    # and what has queued up meanwhile, without a poll each
                    for _ in range(64):
                        frames = recv_frames(router)
                        self._from_router(frames)
                        del frames  # hold no reply's buffer while waiting
                        if not readable(router):
                            break
                    continue
                got = zsock.recv(sock)
                if got is None:
                    continue
                msg = got[1]
                try:
                    handlers[sock](msg)
                except Exception:  # one bad message must not end the process
                    log.exception("stub %d: cannot handle %r", self.procs, msg)

    def _from_router(self, frames: list[Any]) -> None:
        """One frame list from the ROUTER (a message or an envelope of
        messages to one destination): forward it as it is, or handle it here."""
        if len(frames) < 2:
            log.warning("dropped a frame list of length %d from a peer", len(frames))
            return
        try:
            head = parse_header(frames[1])
            sock, ident = self._route(head.dst_grp, head.dst_id, head.dst_kind)
            if sock is None:
                parts = split(frames[1:])
        except MsgError as e:
            log.warning("dropped a message that is not ours from %r: %s", frames[0].bytes, e)
            return
        except Exception:  # an address of no process: one bad message must not end the process
            log.exception("stub %d: cannot route %s", self.procs, _describe(frames[1:]))
            return
        if sock is None:
            for fields, body in parts:
                try:
                    if fields.type in _REPLIES and fields.dst_kind == common_pb2.kStub and len(body) == 1:
                        # a server's fresh values: the hot path, no Msg built
                        self._values_in(fields.dst_grp, fields.param, fields.slice, fields.version,
                                        body[0])
                    else:
                        self.handle(Msg.from_parts(fields, body))
                except Exception:
                    log.exception("stub %d: cannot handle %r", self.procs, Msg.from_parts(fields, body))
            return
        try:
            if ident is None:
                send_frames(sock, frames[1:])
            else:
                frames[0] = ident
                send_frames(sock, frames)
        except Exception:
            log.exception("stub %d: cannot forward %s", self.procs, _describe(frames[1:]))

    def stop(self) -> None:
        """Stop the local servers, then this loop once they have acknowledged."""
        self.stopping = True
        for g, s in self.local_servers:
            self.send(Msg(self.addr, Addr.server(g, s), common_pb2.kStop))
        if not self.local_servers:
            self.running = False

    def close(self) -> None:
        for d in self._dealers.values():
            d.close()
        self.router.close()

    # ----------------------------------------------------------- handle ---
    def handle(self, msg: Msg) -> None:
        """A message for this stub or a local worker."""
        t = msg.type
        if msg.src.kind == common_pb2.kWorkerParam and self.procs_of(msg.src) == self.procs and t in (
                common_pb2.kPut, common_pb2.kGet):
            entry = self.entries[(msg.src.grp, msg.param)]
            (self._put if t == common_pb2.kPut else self._get)(entry, msg)
        elif t in (common_pb2.kRGet, common_pb2.kRUpdate) and msg.dst.kind == common_pb2.kStub:
            self._response(msg)
        elif t == common_pb2.kStop and msg.src.kind == common_pb2.kServer:
            self._stopped_servers += 1
            if self.stopping and self._stopped_servers >= len(self.local_servers):
                self.running = False
        elif t == common_pb2.kStop and msg.src.kind == common_pb2.kWorkerParam:
            self._stopped_workers.add(msg.src)
            if len(self._stopped_workers) == len(self.local_workers) and self.on_workers_done:
                self.on_workers_done()
        elif t == common_pb2.kData and msg.dst.kind == common_pb2.kWorkerLayer and self.on_data is not None:
            self.on_data(msg)
        else:
            log.warning("stub %d: unexpected %r", self.procs, msg)

    def _src(self, entry: ParamEntry) -> Addr:
        # servers buffer updates per worker group (src.grp) and reply here
        return Addr(entry.grp, self.procs, common_pb2.kStub)

    def targets(self, entry: ParamEntry) -> list[tuple[SliceInfo, Addr]]:
        """The slices of the entry's param and the server of each, in the
        entry's worker group's server group (any thread: computed once)."""
        if entry.targets is None:
            sgrp = self.cluster.server_group_of(entry.grp)
            assert self.plan is not None  # set by the node before any worker starts
            entry.targets = [(info, Addr.server(sgrp, info.server))
                             for info in self.plan.slices_of(entry.pid)]
        return entry.targets

    def _put(self, entry: ParamEntry, msg: Msg) -> None:
        p = entry.owner
        assert p.data is not None  # allocated when the net was set up
        flat = p.data.reshape(-1)
        for info, server in self.targets(entry):
            m = Msg(self._src(entry), server, common_pb2.kPut, entry.pid, info.id, msg.version)
            m.add_array(flat[info.offset:info.offset + info.size].copy())
            m.add_bytes(put_meta(entry.num_total, p.lr_scale, p.wd_scale))
            self.send(m)

    def _get(self, entry: ParamEntry, msg: Msg) -> None:
        if msg.version <= entry.next_get:
            return  # a local replica asked already
        entry.next_get = msg.version
        for info, server in self.targets(entry):
            self.send(Msg(self._src(entry), server, common_pb2.kGet, entry.pid, info.id, msg.version))

    def _response(self, msg: Msg) -> None:
        self._values_in(msg.dst.grp, msg.param, msg.slice, msg.version, msg.frames[0])

    def _values_in(self, grp: int, pid: int, sid: int, version: int, frame: Any) -> None:
        """A server's values of slice `sid` of param `pid` (of worker group
        `grp`) at `version`: copied into the local replicas' memory; the last
        slice of the param sets their version (which releases `collect`)."""
        entry = self.entries[(grp, pid)]
        assert self.plan is not None and entry.owner.data is not None
        info = self.plan.slices[sid]  # indexed by global slice id
        if info.param != pid:
            raise MsgError(f"slice {sid} belongs to param {info.param}, not {pid}")
        values = np.frombuffer(getattr(frame, "buffer", frame), dtype=np.float32)
        np.copyto(entry.owner.data.reshape(-1)[info.offset:info.offset + info.size], values)
        with entry.cond:
            # The slices live on different servers, whose versions differ when
            # asynchronous groups' updates reach them in different orders. The
            # param's version is the oldest of its slices': each server's
            # version grows with every reply to this group, so the oldest
            # does too, and `collect` (version > last_version) is released.
            # (The last slice's version is not: it may be older than the one
            # the previous round ended with.)
            if entry.slices_received == 0 or version < entry.round_version:
                entry.round_version = version
            entry.slices_received += 1
            if entry.slices_received >= len(self.targets(entry)):
                entry.slices_received = 0
                for p in entry.shares:
                    p.version = entry.round_version
                entry.cond.notify_all()


def _describe(frames: list[Any]) -> str:
    try:
        return ", ".join(repr(m) for m in Msg.all_from_frames(frames))
    except MsgError:
        return f"{len(frames)} frames"


class StubChannel:
    """A worker's `ParamChannel` to its process's stub (over inproc://)."""

    def __init__(self, stub: Stub, grp: int, wid: int):
        self.stub = stub
        self.addr = Addr.worker(grp, wid)
        self.sock = zsock.dealer(stub.ctx, identity(self.addr))
        self.sock.connect(stub.inproc)
        self.pids: dict[int, int] = {}   # id(param) -> param id
        # Updates for the servers of another process go straight to its stub
        # (the DEALER of this worker's thread), not through this process's
        # stub: one hop less, and the stub thread is not woken (nor takes the
        # GIL from the workers) for each of them. Puts and Gets still go
        # through the stub; an update never overtakes them, since a worker
        # updates a param only after the reply to its Get.
        self._direct: dict[int, zmq.Socket[bytes]] = {}
        self._routes: dict[int, tuple[Any, ...]] = {}  # id(param) -> what update_many needs

    def bind_params(self, params: list[Param], pids: Sequence[int] | None = None) -> None:
        """The ids of the worker's params (default: their positions)."""
        self.pids = {id(p): i for i, p in zip(range(len(params)) if pids is None else pids,
                                              params, strict=False)}

    def _entry(self, p: Param) -> ParamEntry:
        return self.stub.entries[(self.addr.grp, self.pids[id(p)])]

    def _send(self, mtype: int, p: Param, version: int) -> None:
        zsock.send(self.sock, Msg(self.addr, self.stub.addr, mtype, self.pids[id(p)], 0, version))

    def needs_init(self, p: Param) -> bool:
        """Only the first worker of an initialising group fills values (and
        Puts them); the others share memory with it or get the servers'."""
        return self.stub.cluster.initialises_params(self.addr.grp) and self.addr.id == 0

    def put(self, p: Param) -> None:
        """Initial values: sent by the first worker of an initialising group;
        then every worker asks for the servers' values and waits for them."""
        version = p.version
        # mark the values unknown before any message goes out: the reply to
        # another replica's Get may set the version at any time from here on
        p.version, p.last_version = -1, -1
        if self.needs_init(p):
            self._send(common_pb2.kPut, p, version)
        self._send(common_pb2.kGet, p, version)

    def update(self, step: int, p: Param) -> None:
        """Report p's grad (computed on p.version). The last local replica of
        the param's worker group to report sums the replicas' grads and sends
        them, sliced, to the servers (straight to another process's stub, or
        through this one, which only routes); `num_update` is the number of
        local replicas, `base_version` the oldest version among them, the
        header's version the step."""
        self.update_many(step, (p,))

    def update_many(self, step: int, params: Sequence[Param]) -> None:
        """`update` of several params (a layer's): their messages to one
        server go as one envelope."""
        groups: dict[tuple[int, Addr], tuple[zmq.Socket[bytes], list[Any]]] = {}
        for p in params:
            route = self._routes.get(id(p))
            if route is None:
                route = self._routes[id(p)] = self._plan_of(p)
            entry, src, targets = route
            p.last_version = p.version
            with entry.cond:
                base = p.version
                entry.base_version = base if entry.num_update == 0 else min(entry.base_version, base)
                entry.num_update += 1
                if entry.num_update < entry.num_local:
                    continue
                entry.num_update = 0
                entry.slices_received = 0
                base = entry.base_version
            # Every other replica has reported and waits in collect: their
            # grads are final and no reply can come before these messages go.
            flat = self._grad(entry).reshape(-1)
            meta = update_meta(entry.num_local, base)
            for sock, server, sid, lo, hi in targets:
                frames = [pack_header(common_pb2.kUpdate, src, server, entry.pid, sid, step, 2),
                          flat[lo:hi], meta]
                group = groups.get((id(sock), server))
                if group is None:
                    groups[(id(sock), server)] = (sock, frames)
                else:
                    group[1].extend(frames)
        for sock, frames in groups.values():
            send_frames(sock, frames)

    @staticmethod
    def _grad(entry: ParamEntry) -> np.ndarray:
        """The grad of the entry's param summed over its local replicas."""
        assert entry.owner.grad is not None  # allocated when the net was set up
        if entry.num_local == 1:
            return entry.owner.grad
        if entry.grad_sum is None:
            entry.grad_sum = np.empty(entry.owner.shape, np.float32)
        np.copyto(entry.grad_sum, entry.owner.grad)  # shares[0] is the owner
        for q in entry.shares[1:]:
            entry.grad_sum += q.grad
        return entry.grad_sum

    def _plan_of(self, p: Param) -> tuple[ParamEntry, Addr, list[Any]]:
        """p's entry, the source address of its updates, and for each slice
        (socket, server, slice id, start, end)."""
        entry = self._entry(p)
        targets = [(self._socket_to(server), server, info.id, info.offset, info.offset + info.size)
                   for info, server in self.stub.targets(entry)]
        return entry, self.stub._src(entry), targets

    def _socket_to(self, server: Addr) -> zmq.Socket[bytes]:
        p = self.stub.procs_of(server)
        if p == self.stub.procs:
            return self.sock
        d = self._direct.get(p)
        if d is None:
            d = self._direct[p] = self.stub.dealer_to(p, identity(self.addr))
        return d

    def collect(self, p: Param) -> None:
        if p.version > p.last_version:
            return
        entry = self._entry(p)
        with entry.cond:
            entry.cond.wait_for(lambda: p.version > p.last_version)

    def stop(self) -> None:
        """The last call of the worker's thread: tell the stub this worker is done."""
        zsock.send(self.sock, Msg(self.addr, self.stub.addr, common_pb2.kStop))
        for d in self._direct.values():  # the worker has collected every update
            d.close()
        self._direct.clear()
        self._routes.clear()

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        self.sock.close()
