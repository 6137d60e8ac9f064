"""Helper of bench/distributed.py (c): parameter round trips per second of
one N-MB slice over ipc:// between two processes.

    python bench/_roundtrip.py [--mb 4] [--rounds 15] [--trips 40] [--modes raw,raw-ps,singa,server]

prints, as JSON on its last line, the median and best round trips per second
of each mode over the rounds.

A round trip is what a worker waits for on one param: it sends its 4 MB
gradient and gets the 4 MB of fresh values back. Modes:

- `raw`:     pyzmq alone; a DEALER sends the buffer, a ROUTER echoes it back.
             Pure transport: nothing computes, the reply is not stored.
- `raw-ps`:  the smallest parameter server one can write in pyzmq: the
             ROUTER applies the same SGD updater to its values and replies
             with them (zero-copy), the DEALER copies the reply into its
             param. The same work as singa's round trip with no framework.
- `singa`:   the runtime's own path, as in a job with server_worker_separate:
             process A runs a Stub and a worker channel (`update` then
             `collect` of a Param), process B a Stub and a Server thread;
             A's stub slices the grad and forwards it over ipc:// to B's stub,
             which hands it to the Server over inproc://; the reply takes the
             way back and A's stub writes it into the Param.
- `server`:  a DEALER talking to a bare `Server.run` on a ROUTER (no stubs).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time

import numpy as np
import zmq

STEPS_WARM = 20


def _updater():
    from conf import job_pb2
    from runtime.model.updater import create_updater

    proto = job_pb2.UpdaterProto(type=job_pb2.kSGD)
    proto.learning_rate.type = job_pb2.kFixed
    proto.learning_rate.base_lr = 1e-3
    return create_updater(proto)


# ------------------------------------------------------------------ raw ---
def echo(endpoint: str, size: int, ps: bool) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.bind(endpoint)
    upd, data = (_updater(), np.zeros(size, np.float32)) if ps else (None, None)
    step = 0
    while True:
        frames = s.recv_multipart(copy=False)
        if len(frames) == 2 and frames[1].bytes == b"stop":
            return
        if ps:
            grad = np.frombuffer(frames[2].buffer, np.float32)
            upd.apply(step, "w", data, grad)
            step += 1
            frames = [frames[0], frames[1], data]  # type: ignore[list-item]  # ps: data is an array
        s.send_multipart(frames, copy=False)


def raw_client(endpoint: str, size: int, ps: bool):
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.connect(endpoint)
    grad = np.ones(size, np.float32)
    param = np.zeros(size, np.float32)
    head = b"h" * 27

    def trip():
        d.send_multipart([head, grad], copy=False)
        frames = d.recv_multipart(copy=False)
        if ps:
            np.copyto(param, np.frombuffer(frames[1].buffer, np.float32))

    def stop():
        d.send_multipart([b"stop"])

    return trip, stop


# ------------------------------------------------------- singa: stubs ---
def _cluster():
    from runtime.cluster import Cluster

    return Cluster(server_worker_separate=True)  # procs 0: the worker, procs 1: the server


def _param(size: int):
    from conf import job_pb2
    from runtime.model.param import Param

    p = Param(job_pb2.ParamProto(name="w"), (size,))
    p.allocate()
    return p


def server_procs(conn, size: int) -> None:
    """Process B: a stub and one server thread, as runtime.train.node sets them up."""
    import threading

    from runtime.comm import socket as zsock
    from runtime.ps.param_slice import SlicePlan
    from runtime.ps.server import Server
    from runtime.ps.stub import Stub, identity

    cluster = _cluster()
    ctx = zmq.Context()
    stub = Stub(ctx, cluster, 1, "ipc")
    stub.plan = SlicePlan([("w", size)], cluster)
    conn.send(stub.endpoint)
    stub.peers = conn.recv()
    server = Server(0, 0, _updater(), stub.plan)
    sock = zsock.dealer(ctx, identity(server.addr))
    sock.connect(stub.inproc)
    threading.Thread(target=server.run, args=(sock,), daemon=True).start()
    stub.run()  # until the parent terminates this process


def singa_client(conn, size: int):
    """Process A: a stub (in a thread) and a worker's channel."""
    import threading

    from runtime.ps.stub import Stub

    cluster = _cluster()
    ctx = zmq.Context()
    stub = Stub(ctx, cluster, 0, "ipc")
    p = _param(size)
    stub.register(0, 0, [p], num_total=1)
    stub.link()
    ch = stub.channel(0, 0)
    ch.bind_params([p])
    peer = conn.recv()
    stub.peers = {0: stub.endpoint, 1: peer}
    conn.send(stub.peers)
    threading.Thread(target=stub.run, daemon=True).start()
    ch.put(p)
    ch.collect(p)
    p.grad[...] = 1.0
    step = [0]

    def trip():
        ch.update(step[0], p)
        ch.collect(p)
        step[0] += 1

    return trip, lambda: None


def server_direct(endpoint: str, size: int) -> None:
    from runtime.cluster import Cluster
    from runtime.ps.param_slice import SlicePlan
    from runtime.ps.server import Server

    server = Server(0, 0, _updater(), SlicePlan([("w", size)], Cluster()))
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.bind(endpoint)
    server.run(s)


def server_client(endpoint: str, size: int):
    from conf import common_pb2
    from runtime.comm import socket as zsock
    from runtime.comm.msg import Addr, Msg, put_meta, update_meta

    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.connect(endpoint)
    grad = np.ones(size, np.float32)
    param = np.zeros(size, np.float32)
    me, srv = Addr(0, 0, common_pb2.kStub), Addr.server(0, 0)
    zsock.send(d, Msg(me, srv, common_pb2.kPut, 0, 0, 0).add_array(grad).add_bytes(put_meta(1)))
    step = [0]

    def trip():
        m = Msg(me, srv, common_pb2.kUpdate, 0, 0, step[0])
        zsock.send(d, m.add_array(grad).add_bytes(update_meta(1, step[0])))
        np.copyto(param, zsock.recv(d)[1].array(0))
        step[0] += 1

    def stop():
        zsock.send(d, Msg(me, srv, common_pb2.kStop))

    return trip, stop


def start(mode: str, size: int):
    """Start the far process of `mode`; return (trip, stop, child)."""
    endpoint = f"ipc:///tmp/singa-bench-{mode}-{time.time_ns()}"
    if mode in ("raw", "raw-ps"):
        child = mp.Process(target=echo, args=(endpoint, size, mode == "raw-ps"), daemon=True)
        child.start()
        trip, stop = raw_client(endpoint, size, mode == "raw-ps")
    elif mode == "server":
        child = mp.Process(target=server_direct, args=(endpoint, size), daemon=True)
        child.start()
        trip, stop = server_client(endpoint, size)
    elif mode == "singa":
        here, there = mp.Pipe()
        child = mp.Process(target=server_procs, args=(there, size), daemon=True)
        child.start()
        trip, stop = singa_client(here, size)
    else:
        raise SystemExit(f"unknown mode {mode!r}; known: raw, raw-ps, singa, server")
    return trip, stop, child


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=4.0, help="slice size in MB")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--trips", type=int, default=20, help="round trips per mode and round")
    ap.add_argument("--modes", default="raw,raw-ps,singa,server")
    args = ap.parse_args()
    size = int(args.mb * 1024 * 1024) // 4
    modes = args.modes.split(",")
    # All modes live at once and are measured in turns, so that the load of
    # other processes on this machine falls on all of them alike.
    running = {m: start(m, size) for m in modes}
    for trip, _, _ in running.values():
        for _ in range(STEPS_WARM):
            trip()
    rates: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.rounds):
        # alternate the order, so that no mode always follows the same one
        for m in (modes if r % 2 == 0 else modes[::-1]):
            trip = running[m][0]
            t = time.perf_counter()
            for _ in range(args.trips):
                trip()
            rates[m].append(args.trips / (time.perf_counter() - t))
    for _, stop, _child in running.values():
        stop()
    for _, _stop, child in running.values():
        child.join(timeout=2)
        if child.is_alive():
            child.terminate()
            child.join()
    out = {m: {"median": statistics.median(r), "best": max(r)} for m, r in rates.items()}
    # each round's ratios: its modes ran within a fraction of a second of each other
    for m in modes:
        for base in ("raw", "raw-ps"):
            if base in rates and m != base:
                out[m][f"vs_{base}"] = statistics.median(
                    a / b for a, b in zip(rates[m], rates[base]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
