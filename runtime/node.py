"""One process of a distributed job (SINGA's `singa` process): a stub in
the main thread, plus the worker and server threads that the cluster plan
puts in this process.

    python -m runtime.node JOB.bin PROCS MASTER_ENDPOINT [--module M ...]

`JOB.bin` is the validated JobProto (binary protobuf, absolute paths).
Start-up: bind the stub where the OS picks (ipc:// for one host), send the
endpoint to the job master (kConnect), receive the address book of every
process (the start barrier), start the servers, then the workers. When all
local workers have finished the process tells the master (kStop); when the
master says stop, the servers stop and the process exits 0.
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import signal
import sys
import threading

import zmq

from conf import common_pb2 as C, job_pb2
from runtime.cluster import Cluster
from runtime.comm import socket as S
from runtime.comm.msg import Addr, Msg
from runtime.errors import UserError
from runtime.neuralnet.net import NeuralNet
from runtime.param_slice import SlicePlan
from runtime.server import Server
from runtime.stub import Stub, identity
from runtime.updater import create_updater
from runtime.worker import create_worker, log_to_stdout

log = logging.getLogger("singa.node")


def partition_job(job: job_pb2.JobProto, cluster: Cluster, wid: int) -> job_pb2.JobProto:
    """The job as worker `wid` of its group sees it: its batch partition of
    every layer (data parallelism inside a group)."""
    n = cluster.nworkers_per_group
    if n == 1:
        return job
    mine = job_pb2.JobProto()
    mine.CopyFrom(job)
    for layer in mine.neuralnet.layer:
        dim = layer.partition_dim if layer.HasField("partition_dim") else mine.neuralnet.partition_dim
        if dim != 0:
            raise UserError(f"layer '{layer.name}': partition_dim {dim} over {n} workers of a "
                            "group (feature partitioning) is not implemented yet")
        layer.partition_dim = 0
        layer.num_partitions = n
        layer.partition_id = wid
    return mine


class Node:
    def __init__(self, job: job_pb2.JobProto, procs: int, master: str, transport: str = "ipc"):
        self.job = job
        self.procs = procs
        self.cluster = Cluster.from_proto(job.cluster)
        self.ctx = zmq.Context()
        self.stub = Stub(self.ctx, self.cluster, procs, transport)
        self.master = S.dealer(self.ctx, identity(Addr.stub(procs)))
        self.master.connect(master)
        net = NeuralNet.create(job.neuralnet, job_pb2.kTrain, allocate=False)
        owned = [p for p in net.params if p.owner is None]
        self.plan = SlicePlan([(p.name, p.size) for p in owned], self.cluster)
        self.stub.plan = self.plan
        self.errors: list[BaseException] = []
        self._linked = threading.Event()

    def rendezvous(self) -> None:
        me = Addr.stub(self.procs)
        S.send(self.master, Msg(me, Addr.stub(-1), C.kConnect).add_bytes(self.stub.endpoint.encode()))
        while True:
            got = S.recv(self.master)
            if got is not None and got[1].type == C.kConnect:
                book = json.loads(got[1].bytes(0))
                self.stub.peers = {int(k): v for k, v in book.items()}
                return

    def run(self) -> int:
        self.rendezvous()
        threads = []
        for g, s in self.cluster.servers_of_procs(self.procs):
            server = Server(g, s, create_updater(self.job.updater), self.plan)
            sock = S.dealer(self.ctx, identity(server.addr))
            sock.connect(self.stub.inproc)
            threads.append(threading.Thread(target=self._serve, args=(server, sock),
                                            name=f"server{g}.{s}", daemon=True))
        local = list(self.cluster.workers_of_procs(self.procs))
        ready = threading.Barrier(len(local) + 1) if local else None
        for g, w in local:
            threads.append(threading.Thread(target=self._work, args=(g, w, ready),
                                            name=f"worker{g}.{w}", daemon=True))
        for t in threads:
            t.start()
        if ready is not None:
            try:
                ready.wait()  # every local worker registered its params
            except threading.BrokenBarrierError:
                e = self.errors[0]
                if isinstance(e, UserError):
                    raise e
                raise RuntimeError(f"a worker failed to start: {e!r}") from e
            self.stub.link()
            self._linked.set()
        self.stub.on_workers_done = self._workers_done
        self.stub.watch.append((self.master, self._from_master))
        if not local:
            self._workers_done()
        self.stub.run()
        for t in threads:
            t.join(timeout=10)
        self.stub.close()
        return 1 if self.errors else 0

    def _serve(self, server: Server, sock) -> None:
        try:
            server.run(sock)
        finally:
            sock.close()
            stats = server.stats()
            groups = "; ".join(f"group {g}: {v['updates']} updates, staleness mean "
                               f"{v['mean_staleness']:.2f} max {v['max_staleness']}"
                               for g, v in sorted(stats.get("groups", {}).items()))
            syncs = (f"; syncs sent {stats['sync_sent']}, served {stats['sync_served']}"
                     if stats.get("sync_sent") or stats.get("sync_served") else "")
            print(f"Server ({server.grp},{server.sid}): {stats['updates']} updates"
                  + (f" ({groups})" if groups else "") + syncs, flush=True)

    def _work(self, g: int, w: int, ready) -> None:
        channel = None
        try:
            job = partition_job(self.job, self.cluster, w)
            channel = self.stub.channel(g, w)
            quiet = (lambda line: None) if (g, w) != (0, 0) else log_to_stdout
            worker = create_worker(job, channel, g, w, log=quiet)
            worker.setup()
            owned = worker.owned_params()
            channel.bind_params(owned)
            self.stub.register(g, w, owned, num_total=self.cluster.nworkers_per_group)
        except BaseException as e:
            self.errors.append(e)
            ready.abort()
            return
        ready.wait()
        self._linked.wait()
        try:
            worker.init_params()
            worker.run()
        except BaseException as e:
            self.errors.append(e)
            log.exception("worker (%d,%d) failed", g, w)
        finally:
            channel.stop()

    def _workers_done(self) -> None:
        S.send(self.master, Msg(Addr.stub(self.procs), Addr.stub(-1), C.kStop))

    def _from_master(self, msg: Msg) -> None:
        # the master's kStop ends this process: stop the servers, then the stub
        if msg.type == C.kStop:
            self.stub.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runtime.node")
    ap.add_argument("job")
    ap.add_argument("procs", type=int)
    ap.add_argument("master")
    ap.add_argument("--transport", default="ipc", choices=["ipc", "tcp"])
    ap.add_argument("--module", action="append", default=[])
    args = ap.parse_args(argv)
    level = logging.INFO if os.environ.get("SINGA_DEBUG") else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=f"%(asctime)s procs{args.procs} %(name)s %(levelname)s %(message)s")
    from runtime import plugins

    # `kill -USR1 <pid>` prints every thread's stack: what a hung process waits on
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    try:
        plugins.load(args.module)
        with open(args.job, "rb") as f:
            job = job_pb2.JobProto.FromString(f.read())
        return Node(job, args.procs, args.master, args.transport).run()
    except UserError as e:
        print(f"singa: procs {args.procs}: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
