"""Stub: the router of one runtime process, and the workers' parameter channel.

Every process of a job runs one stub (in its main thread, as in SINGA) plus
its worker and server threads. Local threads talk to the stub over
`inproc://` DEALER sockets whose identity is their address; other processes'
stubs connect to its ROUTER over `ipc://` (same host) or `tcp://`.

What the stub does with a message (by its destination):
- for a server of this process: hand it to that server's socket;
- for an entity of another process: forward it to that process's stub;
- parameter traffic of local workers (kPut, kGet, kUpdate) is SINGA's
  aggregation: the grads of the local replicas of a param of one worker
  group are summed, then sliced (`SlicePlan`) and sent to the servers of the
  group's server group with `num_update` = the number of local replicas;
- server replies (kRGet, kRUpdate) carry fresh slice values: the stub copies
  them into the local replicas' shared memory and, once every slice of the
  param has arrived, sets the param's version, which releases `collect`.

Concurrency contract: the stub loop is the only thread that reads the
sockets and writes param values after training starts. A worker thread
calls `StubChannel.update` (a message to the stub) after computing a
param's gradient and must not touch that param again until `collect`
returns for it; `collect` waits on the entry's condition. `ParamEntry`
fields are guarded by that condition.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np
import zmq

from conf import common_pb2 as C
from runtime.cluster import Cluster
from runtime.comm import socket as S
from runtime.comm.msg import Addr, Msg
from runtime.param import Param
from runtime.param_slice import SlicePlan
from runtime.server import PUT_META, UPDATE_META

log = logging.getLogger(__name__)



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
    pending_version: int = -1
    grad_sum: np.ndarray | None = None
    base_version: int = 0
    next_get: int = -1            # the highest version already asked for (dedupe)
    wids: list[int] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def num_local(self) -> int:
        return len(self.shares)

    @property
    def owner(self) -> Param:
        return self.shares[0]


class Stub:
    """The stub of process `procs`: routing and aggregation (see the module doc)."""

    def __init__(self, ctx: zmq.Context, cluster: Cluster, procs: int,
                 transport: str = "ipc", host: str = "127.0.0.1"):
        self.ctx = ctx
        self.cluster = cluster
        self.procs = procs
        self.addr = Addr.stub(procs)
        self.router = S.router(ctx)
        self.inproc = S.bind(self.router, "inproc", name=f"stub{procs}")
        self.endpoint = S.bind(self.router, transport, host=host, name=f"stub{procs}")
        self.peers: dict[int, str] = {}            # procs -> endpoint (the address book)
        self._dealers: dict[int, zmq.Socket] = {}  # lazily connected to other stubs
        self.entries: dict[tuple[int, int], ParamEntry] = {}
        self._reg_lock = threading.Lock()
        self.plan: SlicePlan | None = None
        self.local_workers = list(cluster.workers_of_procs(procs))
        self.local_servers = list(cluster.servers_of_procs(procs))
        self._stopped_workers: set[Addr] = set()
        self.on_workers_done = None   # callback when every local worker has sent kStop
        self.running = False
        self.stopping = False
        self._stopped_servers = 0
        # other sockets the loop serves: (socket, handler(msg))
        self.watch: list[tuple[zmq.Socket, object]] = []

    # ------------------------------------------------------------ setup ---
    def register(self, grp: int, wid: int, params: list[Param], num_total: int) -> None:
        """Register one local worker's owned params (same order in every worker).
        Thread-safe; call `link()` once every local worker has registered."""
        with self._reg_lock:
            if self.plan is None:
                self.plan = SlicePlan([(p.name, p.size) for p in params], self.cluster)
            for pid, p in enumerate(params):
                key = (grp, pid)
                entry = self.entries.get(key)
                if entry is None:
                    self.entries[key] = entry = ParamEntry(grp, pid, [], num_total)
                entry.shares.append(p)
                entry.wids.append(wid)

    def link(self) -> None:
        """Make the local replicas of each param share the values of the
        lowest worker id's (as SINGA's partitions share partition 0's); with
        `share_memory` the worker groups of this process share one copy too
        (in-memory Hogwild: every group's fresh values land in it)."""
        first: dict[int, ParamEntry] = {}
        for (grp, pid), entry in sorted(self.entries.items()):
            order = sorted(range(len(entry.shares)), key=entry.wids.__getitem__)
            entry.shares = [entry.shares[i] for i in order]
            entry.wids = [entry.wids[i] for i in order]
            if self.cluster.share_memory:
                head = first.setdefault(pid, entry)
                entry.shares[0].data = head.owner.data
            for q in entry.shares[1:]:
                q.data = entry.owner.data

    def channel(self, grp: int, wid: int) -> "StubChannel":
        return StubChannel(self, grp, wid)

    # ------------------------------------------------------------ route ---
    def procs_of(self, addr: Addr) -> int:
        if addr.kind == C.kStub:
            return addr.id
        if addr.kind == C.kServer:
            return self.cluster.procs_of_server(addr.grp, addr.id)
        return self.cluster.procs_of_worker(addr.grp, addr.id)

    def _remote(self, procs: int) -> zmq.Socket:
        d = self._dealers.get(procs)
        if d is None:
            d = S.dealer(self.ctx, identity(self.addr))
            d.connect(self.peers[procs])
            self._dealers[procs] = d
        return d

    def send(self, msg: Msg) -> None:
        """Deliver `msg` by its destination."""
        p = self.procs_of(msg.dst)
        if p != self.procs:
            S.send(self._remote(p), msg)
        elif msg.dst.kind == C.kServer:
            S.send(self.router, msg, to=identity(msg.dst))
        else:
            self.handle(msg)

    # ------------------------------------------------------------- loop ---
    def run(self) -> None:
        """Serve until `stop()`; malformed frames are logged and dropped."""
        self.running = True
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        handlers = {self.router: self.send}
        for sock, handler in self.watch:
            poller.register(sock, zmq.POLLIN)
            handlers[sock] = handler
        while self.running:
            for sock, _ in poller.poll(self.cluster.poll_time):
                got = S.recv(sock, router=sock is self.router)
                if got is None:
                    continue
                msg = got[1]
                try:
                    handlers[sock](msg)
                except Exception:  # one bad message must not end the process
                    log.exception("stub %d: cannot handle %r", self.procs, msg)

    def stop(self) -> None:
        """Stop the local servers, then this loop once they have acknowledged."""
        self.stopping = True
        for g, s in self.local_servers:
            self.send(Msg(self.addr, Addr.server(g, s), C.kStop))
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
        if msg.src.kind == C.kWorkerParam and self.procs_of(msg.src) == self.procs and t in (
                C.kPut, C.kGet, C.kUpdate):
            entry = self.entries[(msg.src.grp, msg.param)]
            {C.kPut: self._put, C.kGet: self._get, C.kUpdate: self._update}[t](entry, msg)
        elif t in (C.kRGet, C.kRUpdate) and msg.dst.kind == C.kStub:
            self._response(msg)
        elif t == C.kStop and msg.src.kind == C.kServer:
            self._stopped_servers += 1
            if self.stopping and self._stopped_servers >= len(self.local_servers):
                self.running = False
        elif t == C.kStop and msg.src.kind == C.kWorkerParam:
            self._stopped_workers.add(msg.src)
            if len(self._stopped_workers) == len(self.local_workers) and self.on_workers_done:
                self.on_workers_done()
        else:
            log.warning("stub %d: unexpected %r", self.procs, msg)

    def _src(self, entry: ParamEntry) -> Addr:
        # servers buffer updates per worker group (src.grp) and reply here
        return Addr(entry.grp, self.procs, C.kStub)

    def _server_of(self, entry: ParamEntry, sid: int) -> Addr:
        sgrp = self.cluster.server_group_of(entry.grp)
        return Addr.server(sgrp, self.plan.slice2server[sid])

    def _slices(self, entry: ParamEntry):
        return self.plan.slices_of(entry.pid)

    @staticmethod
    def _range(entry: ParamEntry, info) -> slice:
        return slice(info.offset, info.offset + info.size)

    def _put(self, entry: ParamEntry, msg: Msg) -> None:
        p = entry.owner
        flat = p.data.reshape(-1)
        for info in self._slices(entry):
            m = Msg(self._src(entry), self._server_of(entry, info.id), C.kPut, entry.pid,
                    info.id, msg.version)
            m.add_array(flat[self._range(entry, info)].copy())
            m.add_bytes(PUT_META.pack(entry.num_total, p.lr_scale, p.wd_scale))
            self.send(m)

    def _get(self, entry: ParamEntry, msg: Msg) -> None:
        if msg.version <= entry.next_get:
            return  # a local replica asked already
        entry.next_get = msg.version
        for info in self._slices(entry):
            self.send(Msg(self._src(entry), self._server_of(entry, info.id), C.kGet, entry.pid,
                          info.id, msg.version))

    def _update(self, entry: ParamEntry, msg: Msg) -> None:
        # msg.version is the step; the frame holds the version the grad was computed on
        _, base = UPDATE_META.unpack(msg.bytes(0))
        entry.base_version = base if entry.num_update == 0 else min(entry.base_version, base)
        entry.num_update += 1
        if entry.num_update < entry.num_local:
            return
        entry.num_update = 0
        if entry.num_local == 1:
            grad = entry.owner.grad
        else:
            if entry.grad_sum is None:
                entry.grad_sum = np.empty(entry.owner.shape, np.float32)
            np.copyto(entry.grad_sum, entry.shares[0].grad)
            for q in entry.shares[1:]:
                entry.grad_sum += q.grad
            grad = entry.grad_sum
        flat = grad.reshape(-1)
        entry.slices_received = 0
        for info in self._slices(entry):
            m = Msg(self._src(entry), self._server_of(entry, info.id), C.kUpdate, entry.pid,
                    info.id, msg.version)
            m.add_array(flat[self._range(entry, info)])
            m.add_bytes(UPDATE_META.pack(entry.num_local, entry.base_version))
            self.send(m)

    def _response(self, msg: Msg) -> None:
        entry = self.entries[(msg.dst.grp, msg.param)]
        info = self.plan.slices[msg.slice]  # indexed by global slice id
        entry.owner.data.reshape(-1)[self._range(entry, info)] = msg.array(0)
        with entry.cond:
            entry.slices_received += 1
            if entry.slices_received >= len(self._slices(entry)):
                entry.slices_received = 0
                for p in entry.shares:
                    p.version = msg.version
                entry.cond.notify_all()


class StubChannel:
    """A worker's `ParamChannel` to its process's stub (over inproc://)."""

    def __init__(self, stub: Stub, grp: int, wid: int):
        self.stub = stub
        self.addr = Addr.worker(grp, wid)
        self.sock = S.dealer(stub.ctx, identity(self.addr))
        self.sock.connect(stub.inproc)
        self.pids: dict[int, int] = {}   # id(param) -> param id

    def bind_params(self, params: list[Param]) -> None:
        self.pids = {id(p): i for i, p in enumerate(params)}

    def _entry(self, p: Param) -> ParamEntry:
        return self.stub.entries[(self.addr.grp, self.pids[id(p)])]

    def _send(self, mtype: int, p: Param, version: int) -> None:
        S.send(self.sock, Msg(self.addr, self.stub.addr, mtype, self.pids[id(p)], 0, version))

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
            self._send(C.kPut, p, version)
        self._send(C.kGet, p, version)

    def update(self, step: int, p: Param) -> None:
        p.last_version = p.version
        m = Msg(self.addr, self.stub.addr, C.kUpdate, self.pids[id(p)], 0, step)
        S.send(self.sock, m.add_bytes(UPDATE_META.pack(1, p.version)))

    def collect(self, p: Param) -> None:
        if p.version > p.last_version:
            return
        entry = self._entry(p)
        with entry.cond:
            entry.cond.wait_for(lambda: p.version > p.last_version)

    def stop(self) -> None:
        S.send(self.sock, Msg(self.addr, self.stub.addr, C.kStop))

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass

    def close(self) -> None:
        self.sock.close()
