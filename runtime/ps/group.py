"""A partitioned worker group inside one process: how its workers' bridge
layers talk, and how its first worker holds the whole conf params of
feature-partitioned layers.

Bridges (`BridgeHub`, `BridgeLink`). Each process has one hub: a mailbox per
(group, bridge id, direction) for the local workers' bridge halves. A
worker's link sends to the worker running the other half: into the hub
when that worker is in this process (the array itself, no copy), else as a
`kData` message straight to that process's stub (a DEALER of the worker's
thread, identity `Addr.worker_layer(g, w)`), whose loop hands it to its hub
(`Stub.on_data = hub.deliver`). The message: header (src/dst the two
workers' layer addresses, param = bridge id, slice = direction, version = a
sequence number per bridge and direction), frames [data float32, labels
bytes, b"dtype:d0,d1,..."] (the label frames only when the data has labels).
The receiver knows the shape. Messages of one bridge and direction arrive
in order, and the sequence number checks it.

Whole params (`WholeChannel`). The group's first worker (partition 0) holds
each feature-partitioned conf param whole (`NeuralNet.wholes`): its own
part is a row view of it. The process makes the other local workers' parts
row views of it too (`wire_wholes`), and registers a *mirror* (a row view
registered with the stub, which never sends updates) for each part held by
a worker of another process. The worker's channel is wrapped so that for a
whole param:
- `needs_init` / `put`: the first worker of an initialising group fills the
  whole param (so its values equal the unpartitioned net's, drawn in the
  same order) and puts every part to the servers;
- `collect` (before a test, a checkpoint, and at the end): waits for its own
  part, then until every other part has reached the same version: a local
  part when its worker's update is applied, a mirror after a Get to the
  servers. So tests and checkpoints see, and save, the conf params of one
  step. (With several worker groups per server group the versions count
  every group's updates; a local part then waits for its pending update
  only.)
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from conf import common_pb2
from runtime.comm import socket as zsock
from runtime.comm.msg import Addr, Msg, aux_meta, read_aux_meta
from runtime.model.param import Param
from runtime.neuralnet.partition import part_name

# a bridge layer's delivery: (step version, data, aux or None)
Delivery = tuple[int, np.ndarray, np.ndarray | None]

if TYPE_CHECKING:
    from runtime.cluster import Cluster
    from runtime.neuralnet.net import NeuralNet
    from runtime.ps.stub import Stub, StubChannel

log = logging.getLogger(__name__)

# how long a bridge waits before it says what it waits for (it keeps waiting:
# a worker that died ends its process, and the job master stops the others)
WAIT_WARN_S = 60.0


class BridgeHub:
    """The mailboxes of one process's bridge halves (any thread)."""

    def __init__(self) -> None:
        self._boxes: dict[tuple[int, int, int], queue.SimpleQueue[Delivery]] = {}
        self._lock = threading.Lock()

    def box(self, grp: int, bridge: int, direction: int) -> queue.SimpleQueue[Delivery]:
        key = (grp, bridge, direction)
        b = self._boxes.get(key)
        if b is None:
            with self._lock:
                b = self._boxes.setdefault(key, queue.SimpleQueue())
        return b

    def deliver(self, msg: Msg) -> None:
        """A kData message from another process (the stub's thread)."""
        aux = None
        if len(msg.frames) >= 3:
            dtype, shape = read_aux_meta(msg.bytes(2))
            aux = msg.array(1, dtype=dtype).reshape(shape)
        self.box(msg.dst.grp, msg.param, msg.slice).put((msg.version, msg.array(0), aux))


class BridgeLink:
    """One worker's end of its group's bridges (`runtime.neuralnet.bridge.Link`).
    Used by its worker's thread only (it owns its sockets)."""

    def __init__(self, hub: BridgeHub, grp: int, wid: int, procs: int,
                 procs_of: Callable[[int, int], int],
                 connect: Callable[[int, bytes], zmq.Socket[bytes]] | None = None):
        self.hub = hub
        self.grp, self.wid, self.procs = grp, wid, procs
        self.addr = Addr.worker_layer(grp, wid)
        self._procs_of = procs_of       # (grp, wid) -> its process
        self._connect = connect         # (procs, identity) -> a DEALER to that process's stub
        self._socks: dict[int, zmq.Socket[bytes]] = {}
        self._sent: dict[tuple[int, int], int] = {}
        self._received: dict[tuple[int, int], int] = {}

    def send(self, bridge: int, direction: int, to_partition: int, data: np.ndarray,
             aux: np.ndarray | None = None) -> None:
        seq = self._sent.get((bridge, direction), 0)
        self._sent[(bridge, direction)] = seq + 1
        p = self._procs_of(self.grp, to_partition)
        if p == self.procs:
            self.hub.box(self.grp, bridge, direction).put((seq, data, aux))
            return
        msg = Msg(self.addr, Addr.worker_layer(self.grp, to_partition), common_pb2.kData, bridge,
                  direction, seq)
        msg.add_array(np.asarray(data, dtype=np.float32))
        if aux is not None:
            a = np.ascontiguousarray(aux)
            msg.add_bytes(a.tobytes())
            msg.add_bytes(aux_meta(a))
        zsock.send(self._socket(p), msg)

    def _socket(self, procs: int) -> zmq.Socket[bytes]:
        sock = self._socks.get(procs)
        if sock is None:
            if self._connect is None:
                raise RuntimeError(f"worker ({self.grp},{self.wid}): no connection to process "
                                   f"{procs} for its bridge layers")
            sock = self._socks[procs] = self._connect(procs, repr(self.addr).encode())
        return sock

    def recv(self, bridge: int, direction: int, shape: tuple[int, ...], what: str
             ) -> tuple[np.ndarray, np.ndarray | None]:
        box = self.hub.box(self.grp, bridge, direction)
        start = time.monotonic()
        while True:
            try:
                seq, data, aux = box.get(timeout=WAIT_WARN_S)
                break
            except queue.Empty:
                log.warning("worker (%d,%d) has waited %.0f s for %s (bridge %d)", self.grp,
                            self.wid, time.monotonic() - start, what, bridge)
        want = self._received.get((bridge, direction), 0)
        if seq != want:
            raise RuntimeError(f"worker ({self.grp},{self.wid}): {what}: message {seq} of bridge "
                               f"{bridge} arrived, expected {want}")
        self._received[(bridge, direction)] = want + 1
        return (data if data.shape == tuple(shape) else data.reshape(shape)), aux

    def close(self) -> None:
        for s in self._socks.values():
            s.close(linger=1000)  # what is queued still goes out
        self._socks.clear()


class WholeChannel:
    """The parameter channel of a group's first worker when its net holds
    whole conf params (see the module docstring); everything else goes to
    the wrapped channel."""

    def __init__(self, inner: StubChannel, stub: Stub, cluster: Cluster, grp: int, wid: int):
        self._inner = inner
        self.stub, self.cluster = stub, cluster
        self.grp, self.wid = grp, wid
        self.wholes: dict[int, Param] = {}          # id(whole) -> whole
        self.own: dict[str, Param] = {}             # whole name -> this worker's part
        self.others: dict[str, list[tuple[int, Param]]] = {}  # whole name -> (pid, part or mirror)
        self.mirrors: set[int] = set()              # id() of the mirrors among `others`

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def bind(self, net: NeuralNet, pids: dict[str, int]) -> None:
        """Learn the whole params of this worker's net and its own parts."""
        for name, whole in net.wholes.items():
            self.wholes[id(whole)] = whole
            self.own[name] = net.param(part_name(name, net.partition or 0))
            self.others[name] = []
        self._pids = pids

    def add_part(self, whole: str, k: int, part: Param, mirror: bool) -> None:
        self.others[whole].append((self._pids[part_name(whole, k)], part))
        if mirror:
            self.mirrors.add(id(part))

    # ---------------------------------------------------------- channel ---
    def needs_init(self, p: Param) -> bool:
        if id(p) in self.wholes:
            return self.cluster.initialises_params(self.grp) and self.wid == 0
        return self._inner.needs_init(p)

    def put(self, p: Param) -> None:
        whole = self.wholes.get(id(p))
        if whole is None:
            return self._inner.put(p)
        own = self.own[whole.name]
        own.version = whole.version
        if self.needs_init(whole):
            for pid, _ in self.others[whole.name]:
                self._send(common_pb2.kPut, pid, whole.version)
        self._inner.put(own)

    def collect(self, p: Param) -> None:
        whole = self.wholes.get(id(p))
        if whole is None:
            return self._inner.collect(p)
        own = self.own[whole.name]
        self._inner.collect(own)
        version = own.version
        # With one worker group per server group every param's version counts
        # the group's steps, so "the same version" is "the same step". With
        # several, the versions count the other groups' updates too, and a
        # part in this process waits only for its pending update (the
        # values are asynchronous anyway).
        lockstep = self.cluster.nworker_groups // self.cluster.nserver_groups == 1
        for pid, part in self.others[whole.name]:
            if id(part) in self.mirrors:
                if part.version >= version:
                    continue
                self._send(common_pb2.kGet, pid, version)
            wanted = version if id(part) in self.mirrors or lockstep else None
            entry = self.stub.entries[(self.grp, pid)]
            with entry.cond:
                entry.cond.wait_for(_reached(part, wanted))
        whole.version = version

    def _send(self, mtype: int, pid: int, version: int) -> None:
        zsock.send(self._inner.sock, Msg(self._inner.addr, self.stub.addr, mtype, pid, 0, version))


def _reached(part: Param, version: int | None) -> Callable[[], bool]:
    """`wait_for`'s predicate: `part` is at `version` or later (None: it has
    changed since its last update)."""
    if version is None:
        return lambda: part.version > part.last_version
    return lambda: part.version >= version


def wire_wholes(stub: Stub, grp: int, net: NeuralNet, channel: WholeChannel,
                local: dict[int, NeuralNet],
                pids: dict[str, int]) -> None:
    """Before any param is initialised: make the parts of the other local
    workers of group `grp` row views of worker 0's whole params (`local`:
    worker id -> its train net) and register a mirror for every part held in
    another process."""
    for name, whole in net.wholes.items():
        own = net.param(part_name(name, 0))
        part = net.part_of(own)
        assert part is not None and whole.data is not None  # a whole param's part 0, allocated
        rows = part.hi - part.lo
        for k in range(1, part.count):
            view = whole.data[k * rows:(k + 1) * rows]
            other = local.get(k)
            if other is not None:
                q = other.param(part_name(name, k))
                q.data = view
                channel.add_part(name, k, q, mirror=False)
                continue
            proto = type(own.proto)()
            proto.CopyFrom(own.proto)
            proto.name = part_name(name, k)
            mirror = Param(proto, view.shape)
            mirror.data = view
            mirror.version = mirror.last_version = -1
            mirror.trainable = False  # never updated from here
            stub.register(grp, 0, [mirror], [1], pids=[pids[proto.name]])
            channel.add_part(name, k, mirror, mirror=True)
