"""Helper of bench/distributed.py (c): round trips per second of N-MB slices
over ipc:// between two processes, through a singa Server ("server") or a
raw pyzmq echo ("raw"). Prints the rate on its last line."""
import multiprocessing as mp
import sys
import time

import numpy as np
import zmq


def echo(endpoint: str) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.bind(endpoint)
    while True:
        frames = s.recv_multipart(copy=False)
        if len(frames) == 2 and frames[1].bytes == b"stop":
            return
        s.send_multipart(frames, copy=False)


def serve(endpoint: str, size: int) -> None:
    from conf import common_pb2 as C, job_pb2
    from runtime.cluster import Cluster
    from runtime.param_slice import SlicePlan
    from runtime.server import Server
    from runtime.updater import create_updater

    proto = job_pb2.UpdaterProto(type=job_pb2.kSGD)
    proto.learning_rate.type = job_pb2.kFixed
    plan = SlicePlan([("w", size)], Cluster())
    server = Server(0, 0, create_updater(proto), plan)
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.bind(endpoint)
    server.run(s)


def main() -> None:
    mode, n, mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    size = mb * 1024 * 1024 // 4
    endpoint = f"ipc:///tmp/singa-bench-{mode}-{time.time_ns()}"
    child = mp.Process(target=echo if mode == "raw" else serve,
                       args=(endpoint,) if mode == "raw" else (endpoint, size))
    child.start()
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.connect(endpoint)
    grad = np.ones(size, np.float32)
    if mode == "raw":
        def trip():
            d.send_multipart([b"h" * 27, grad], copy=False)
            d.recv_multipart(copy=False)
    else:
        from conf import common_pb2 as C
        from runtime.comm import socket as S
        from runtime.comm.msg import Addr, Msg
        from runtime.server import put_meta, update_meta

        me = Addr(0, 0, C.kStub)
        S.send(d, Msg(me, Addr.server(0, 0), C.kPut, 0, 0, 0).add_array(grad).add_bytes(put_meta(1)))
        step = [0]

        def trip():
            m = Msg(me, Addr.server(0, 0), C.kUpdate, 0, 0, step[0])
            S.send(d, m.add_array(grad).add_bytes(update_meta(1, step[0])))
            S.recv(d)
            step[0] += 1
    for _ in range(10):
        trip()
    t = time.perf_counter()
    for _ in range(n):
        trip()
    rate = n / (time.perf_counter() - t)
    if mode == "raw":
        d.send_multipart([b"stop"])
    else:
        from conf import common_pb2 as C
        from runtime.comm import socket as S
        from runtime.comm.msg import Addr, Msg
        S.send(d, Msg(Addr(0, 0, C.kStub), Addr.server(0, 0), C.kStop))
    child.join(timeout=10)
    if child.is_alive():
        child.terminate()
    print(rate)


if __name__ == "__main__":
    main()
