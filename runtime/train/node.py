"""One process of a job (SINGA's `singa` process), started by the job master.

    python -m runtime.train.node --job-id N --procs P --master ENDPOINT --log PATH
                           [--resume] [--test] [--module M ...]

The job (binary JobProto, absolute paths) and, across hosts, the job's CURVE
keys come on stdin (`runtime.jobs.launcher.handoff`), never on the command
line. Under srun or mpirun, `--procs` is left out and the rank comes from the
environment (`runtime.jobs.envrank`); the job is then read from `--job-file`.

The process leads its own session (the master signals its group), writes
its stdout and stderr to its log, and talks to the master through a
`MasterLink` (kConnect, heartbeats, metrics, kStop).

- A job of one process, one worker and one server runs SINGA's Driver here
  (`run_single`): the fast single-process path, no stub.
- Otherwise a `Node`: the stub in the main thread plus the worker and server
  threads that the cluster plan puts in this process. Start-up: bind the
  stub where the OS picks (ipc:// on one host, tcp:// across hosts), send the
  endpoint to the master, receive the address book of every process (the
  start barrier), start the servers, then the workers. When all local
  workers have finished the process tells the master (kStop); when the
  master says stop, the servers stop and the process exits 0.

Whatever ends the process with an exception (in the main thread, a worker
or a server thread; before it connects or after, a divergence included)
goes through `report_failure`: the traceback to the log, the one-line
reason to the master (kFail), exit 1 (2 for a UserError).
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
import time
import traceback
from pathlib import Path

import zmq

from conf import common_pb2, job_pb2
from runtime import checkpoint
from runtime.cluster import Cluster
from runtime.comm import socket as zsock
from runtime.comm.heartbeat import MasterLink
from runtime.comm.msg import Msg
from runtime.errors import Diverged, UserError, reason_line
from runtime.model.updater import create_updater
from runtime.neuralnet.bridge import attach
from runtime.neuralnet.net import NeuralNet
from runtime.ps.group import BridgeHub, BridgeLink, WholeChannel, wire_wholes
from runtime.ps.param_slice import SlicePlan
from runtime.ps.server import Server
from runtime.ps.stub import Stub, identity
from runtime.train.algorithms import create_worker
from runtime.train.worker import log_to_stdout
from runtime.viz.graph import write_visualization

log = logging.getLogger("singa.node")


def partition_job(job: job_pb2.JobProto, cluster: Cluster, wid: int) -> job_pb2.JobProto:
    """The job as worker `wid` of its group sees it: every layer marked as
    partition `wid` of `nworkers_per_group`. The builder then makes the
    training net of that partition, by each layer's partition_dim (the
    net's when the layer sets none), with the connection and bridge layers
    SINGA inserts (runtime.neuralnet.partition); test and validation nets
    stay whole."""
    n = cluster.nworkers_per_group
    if n == 1:
        return job
    mine = job_pb2.JobProto()
    mine.CopyFrom(job)
    for layer in mine.neuralnet.layer:
        layer.num_partitions = n
        layer.partition_id = wid
    return mine


class Node:
    def __init__(self, job: job_pb2.JobProto, procs: int, link: MasterLink, ctl: zmq.Socket[bytes],
                 transport: str = "ipc", host: str = "127.0.0.1", keys=None):
        self.job = job
        self.procs = procs
        self.cluster = Cluster.from_proto(job.cluster)
        self.ctx = link.ctx
        self.stub = Stub(self.ctx, self.cluster, procs, transport, host, keys=keys)
        self.link = link
        self.ctl = ctl
        # the group's whole training graph: its params are what the servers hold
        # (replicas once, each part of a feature-partitioned param on its own)
        self.net = NeuralNet.create(job.neuralnet, job_pb2.kTrain,
                                    self.cluster.nworkers_per_group, allocate=False)
        owned = self.net.group_params()
        self.pids = {p.name: i for i, p in enumerate(owned)}
        self.plan = SlicePlan([(p.name, p.size) for p in owned], self.cluster)
        self.stub.plan = self.plan
        self.hub = BridgeHub()  # the local workers' bridge layers receive here
        self.stub.on_data = self.hub.deliver
        self._nets: dict[tuple[int, int], NeuralNet] = {}        # local (g, w) -> train net
        self._wholes: dict[int, WholeChannel] = {}                # g -> its worker 0's channel
        self.errors: list[BaseException] = []
        self.workers: list = []
        self.servers: list[Server] = []
        self.resumed = False  # set when started with --resume
        self.resume_state: dict | None = None  # worker (0, 0)'s, from the checkpoint
        self._linked = threading.Event()

    def rendezvous(self) -> None:
        self.stub.peers = self.link.connect(process_info(self.procs, self.stub.endpoint))
        self.link.start()

    def step(self) -> int:
        return max((w.step for w in self.workers), default=0)

    def server_metrics(self) -> list[dict]:
        """Each local server's update count and staleness, per worker group."""
        out = []
        for server in list(self.servers):
            for g, v in sorted(server.stats().get("groups", {}).items()):
                out.append({"phase": "server", "group": g, "server": f"{server.grp}/{server.sid}",
                            "updates": v["updates"], "staleness_mean": round(v["mean_staleness"], 3),
                            "staleness_max": v["max_staleness"]})
        return out

    def run(self) -> int:
        self.rendezvous()
        threads = []
        for g, s in self.cluster.servers_of_procs(self.procs):
            server = Server(g, s, create_updater(self.job.updater), self.plan)
            self._server_checkpoints(server)
            self.servers.append(server)
            sock = zsock.dealer(self.ctx, identity(server.addr))
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
                raise self.errors[0] from None  # reported as it is, with its traceback
            self._wire_groups()
            self.stub.link()
            self._linked.set()
        if any(w == (0, 0) for w in local):
            write_visualization(self.job, self.net)
        self.stub.on_workers_done = self._workers_done
        self.stub.watch.append((self.ctl, self._from_master))
        if not local:
            self._workers_done()
        self.stub.run()
        for t in threads:
            t.join(timeout=10)
        self.link.close()  # the servers' final counts go out with it
        self.stub.close()
        return 1 if self.errors else 0

    def _server_checkpoints(self, server: Server) -> None:
        """The servers of worker group 0 (whose first worker checkpoints) save
        their state beside each checkpoint, and load it on --resume: the
        updater's history (momentum, Adam's moments) lives on the servers."""
        if self.cluster.server_group_of(0) != server.grp:
            return
        job = self.job
        ws = job.cluster.workspace
        if self.resumed:
            path = checkpoint.server_state_path(ws, job.step, server.grp, server.sid)
            if path.is_file():
                server.load_state(checkpoint.load_arrays(path))
            else:
                log.warning("no server state %s: the updater's history starts afresh", path)
        server.save_at(ws, checkpoint.due(job), 0)

    def _serve(self, server: Server, sock) -> None:
        try:
            server.run(sock)
        except BaseException as e:  # noqa: BLE001 - a server that fails ends the process
            self._fatal(f"server ({server.grp},{server.sid})", e)
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
        channel = link = None
        try:
            job = partition_job(self.job, self.cluster, w)
            channel = self.stub.channel(g, w)
            quiet = (lambda line: None) if (g, w) != (0, 0) else log_to_stdout
            # the group's first worker holds feature-partitioned params whole
            wholes = WholeChannel(channel, self.stub, self.cluster, g, w) \
                if w == 0 and self.net.wholes else None
            worker = create_worker(job, wholes or channel, g, w, log=quiet)
            if w == 0:  # each group's first worker speaks for its group
                worker.on_report = metric_reporter(self.link, self.job, g, w)
            self.workers.append(worker)
            worker.setup()
            net = worker.train_net
            params = net.group_params()
            pids = [self.pids[p.name] for p in params]
            channel.bind_params(params, pids)
            self.stub.register(g, w, params, [net.replicas(p) for p in params], pids=pids)
            if wholes is not None:
                wholes.bind(net, self.pids)
                self._wholes[g] = wholes
            link = BridgeLink(self.hub, g, w, self.procs, self.cluster.procs_of_worker,
                              self.stub.dealer_to)
            attach(net.layers, link)
            self._nets[(g, w)] = net
        except BaseException as e:  # noqa: BLE001 - the main thread reports it (report_failure)
            self.errors.append(e)
            ready.abort()
            return
        ready.wait()
        self._linked.wait()
        try:
            first = (g, w) == (0, 0)
            # group 0's workers read on from their data positions (worker.checkpoint)
            state = self.resume_state if first else None
            if self.resumed and g == 0 and w > 0:
                state = checkpoint.load_resume_state(str(checkpoint.position_path(
                    self.job.cluster.workspace, self.job.step, w)))
            worker.init_params(state)
            if self.resumed and first:
                worker.log(f"Resumed from step {self.job.step}")
            worker.run()
        except BaseException as e:  # noqa: BLE001 - any failure ends the process
            self._fatal(f"worker ({g},{w})", e)
        finally:
            channel.stop()
            link.close()

    def _wire_groups(self) -> None:
        """Once every local worker has built its net, before any param has a
        value: the feature-partitioned params of each group whose first
        worker is here become row views of its whole params, with mirrors
        for the parts in other processes (runtime.ps.group)."""
        for g, channel in self._wholes.items():
            local = {w: net for (grp, w), net in self._nets.items() if grp == g and w > 0}
            wire_wholes(self.stub, g, self._nets[(g, 0)], channel, local, self.pids)

    def _fatal(self, who: str, e: BaseException) -> None:
        """A worker or server thread that fails ends its process at once,
        after `report_failure`: its group cannot go on without it, and the
        job master stops the other processes and records the failure."""
        os._exit(report_failure(self.link, self.procs, e, who))

    def _workers_done(self) -> None:
        self.link.done()

    def _from_master(self, msg: Msg) -> None:
        # the master's kStop ends this process: stop the servers, then the stub
        if msg.type == common_pb2.kStop:
            self.stub.stop()


def metric_reporter(link: MasterLink, job: job_pb2.JobProto, g: int, w: int):
    """A worker's `on_report`: its records, with who made them and the
    learning rate at their step, to the job master's metrics stream."""
    from runtime.model.lr import create_lr

    lr = create_lr(job.updater.learning_rate) if job.updater.HasField("learning_rate") else None

    def report(rec: dict) -> None:
        extra = {"time": round(time.time(), 4), "group": g, "worker": w}
        if lr is not None:
            extra["lr"] = float(lr.get(int(rec.get("step", 0))))
        link.metric({**rec, **extra})

    return report


def report_failure(link: MasterLink | None, procs: int | None, e: BaseException,
                   who: str = "") -> int:
    """Say once why this process ends: the whole traceback to its log (not
    for a UserError or Diverged, whose message is the whole story), then
    `singa: procs P: WHO: REASON` as the log's last word, and the reason
    line (`runtime.errors.reason_line`) to the job master over `link`
    (kFail), which puts it in the job's reason. Returns the exit code: 2
    for a UserError, else 1. The one way every failure of a process is
    reported: the main thread's, a worker's or a server's, before the
    process connects or after."""
    reason = reason_line(e)
    if not isinstance(e, (UserError, Diverged)):
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    where = f"procs {procs}: " if procs is not None else ""
    print(f"singa: {where}{who + ': ' if who else ''}{reason}", file=sys.stderr, flush=True)
    if link is not None:
        try:
            if not link.fail(reason):
                log.warning("the job master did not acknowledge this process's failure")
        except Exception:  # the log line above is the master's fallback
            log.warning("could not tell the job master why this process fails", exc_info=True)
    return 2 if isinstance(e, UserError) else 1


def process_info(procs: int, endpoint: str) -> dict:
    """What this process tells the master of itself in its kConnect."""
    import socket as pysocket

    import psutil

    return {"procs": procs, "endpoint": endpoint, "pid": os.getpid(), "pgid": os.getpgid(0),
            "start_time": psutil.Process().create_time(),
            # under Slurm, the node's name in Slurm (namespaced or containerised nodes
            # may all share one host name)
            "host": os.environ.get("SLURMD_NODENAME") or pysocket.gethostname()}


def _own_session() -> None:
    # The master signals this process's group; over ssh the process already
    # leads its session (EPERM), under srun/mpirun it may not.
    try:
        os.setsid()
    except OSError:
        pass


def _redirect_output(path: str) -> None:
    """This process's stdout and stderr go to its log file (0600)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def run_single(job: job_pb2.JobProto, link: MasterLink, ctl: zmq.Socket[bytes], resume: bool,
               test: bool) -> int:
    """A job of one process with one worker and one server: SINGA's Driver in
    this process (no stub, no sockets but the link to the master)."""
    from runtime.train import single
    from runtime.train.worker import Worker

    link.connect(process_info(0, ""))
    current: list[Worker] = []
    link.step = lambda: current[0].step if current else 0
    link.start()

    def track(worker: Worker) -> None:  # single builds the worker; the link watches it
        worker.on_report = metric_reporter(link, job, 0, 0)
        current.append(worker)

    if not test:
        write_visualization(job)
    if test:
        if resume:
            single.setup_resume(job)
        single.test(job, log=log_to_stdout, on_worker=track)
    else:
        single.train(job, resume=resume, log=log_to_stdout, on_worker=track)
    link.done()
    zsock.recv(ctl)  # the master's kStop: every process is done
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runtime.train.node")
    ap.add_argument("--job-id", type=int, default=0)
    ap.add_argument("--procs", type=int, default=None,
                    help="this process's id; without it, the rank that srun or mpirun set")
    ap.add_argument("--master", required=True)
    ap.add_argument("--log", default=None, help="the log file this process writes")
    ap.add_argument("--job-file", default=None,
                    help="read the job (and keys, JOB_FILE.keys) from files, not stdin")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--test", action="store_true")
    ap.add_argument("--module", action="append", default=[])
    args = ap.parse_args(argv)
    os.umask(0o077)
    _own_session()
    from runtime.jobs import code
    from runtime.jobs.launcher import read_handoff

    if args.job_file:
        job_bytes = open(args.job_file, "rb").read()
        keys_path = args.job_file + ".keys"
        keys = json.load(open(keys_path)) if os.path.exists(keys_path) else None
        code_dir = Path(args.job_file).parent / "code"
    else:
        job_bytes, keys, files = read_handoff(sys.stdin.buffer)
        import tempfile

        code_dir = Path(tempfile.mkdtemp(prefix="singa-code-"))
        code.unpack(files, code_dir)
    # the user's code as shipped with the job comes first on the path
    sys.path.insert(0, str(code_dir))
    modules = code.modules_to_load(args.module, code_dir)
    procs = args.procs
    if procs is None:
        from runtime.jobs.envrank import rank_from_env

        found = rank_from_env()
        if found is None:
            print("singa: runtime.train.node: no --procs and no rank from srun or mpirun in the "
                  "environment (SLURM_PROCID, OMPI_COMM_WORLD_RANK, PMI_RANK)", file=sys.stderr)
            return 2
        procs = found[0]
    if args.log:
        _redirect_output(args.log.replace("%t", str(procs)))
    level = logging.INFO if os.environ.get("SINGA_DEBUG") else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=f"%(asctime)s procs{procs} %(name)s %(levelname)s %(message)s")
    # `kill -USR1 <pid>` prints every thread's stack: what a hung process waits on
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    from runtime import plugins

    ctx = zmq.Context()
    link = None
    try:
        if keys is not None:
            from runtime.comm.security import Guard, JobKeys

            keys = JobKeys.from_dict(keys)
            guard = Guard(ctx, keys)  # noqa: F841 - lives as long as the process
        ctl = ctx.socket(zmq.PULL)
        ctl_endpoint = f"inproc://ctl-{os.getpid()}"
        ctl.bind(ctl_endpoint)
        # the link comes first, so that whatever fails from here on (the
        # user's modules, a bad checkpoint) reaches the master as the reason
        link = MasterLink(ctx, procs, args.master, keys=keys, ctl_endpoint=ctl_endpoint)
        plugins.load(modules)
        job = job_pb2.JobProto.FromString(job_bytes)
        transport = "tcp" if args.master.startswith("tcp://") else "ipc"
        host = "127.0.0.1"
        if transport == "tcp":
            from runtime.jobs.hostfile import advertise_address

            host = advertise_address(peer=args.master[len("tcp://"):].rsplit(":", 1)[0].strip("[]"))
        cluster = Cluster.from_proto(job.cluster)
        one = args.test or (cluster.nprocs == 1 and cluster.nworkers == 1 and cluster.nservers == 1)
        if one:
            return run_single(job, link, ctl, args.resume, args.test)
        resume_state = None
        if args.resume:
            from runtime.train import single

            resume_state = single.setup_resume(job)
        node = Node(job, procs, link, ctl, transport, host, keys)
        node.resumed = args.resume
        node.resume_state = resume_state
        link.periodic = node.server_metrics
        link.step = node.step
        return node.run()
    except Exception as e:  # noqa: BLE001 - whatever ends this process, the master hears why
        return report_failure(link, procs, e)

if __name__ == "__main__":
    sys.exit(main())
