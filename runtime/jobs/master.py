"""The job master of a multi-process job: rendezvous, start barrier, stop.

Every process binds its stub where the OS picks and sends its endpoint to
the master (kConnect). When all `nprocs` have connected, the master sends
each the address book (a JSON object procs -> endpoint), which is the start
barrier. A process whose workers have all finished says so (kStop); when
every process has, the master tells them all to stop. A process that exits
before that (crash, kill, error) fails the job: the master stops the others
(TERM to each process group, then KILL after a grace period) and reports
which process died and how.

Not here yet (cluster-manager issue): the registry, heartbeats, remote hosts.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time

import zmq

from conf import common_pb2 as C
from runtime.comm import socket as S
from runtime.comm.msg import Addr, Msg

log = logging.getLogger("singa.master")


def describe_exit(code: int) -> str:
    """An exit status in words, as dask's Nanny says it."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


class Master:
    def __init__(self, nprocs: int, transport: str = "ipc", host: str = "127.0.0.1"):
        self.nprocs = nprocs
        self.ctx = zmq.Context()
        self.router = S.router(self.ctx)
        self.endpoint = S.bind(self.router, transport, host=host, name="master")
        self.book: dict[int, str] = {}
        self.idents: dict[int, bytes] = {}
        self.done: set[int] = set()
        self.reason = ""

    def serve(self, procs: list[subprocess.Popen], grace: float = 5.0) -> int:
        """Run the job to its end; 0 when every process finished cleanly."""
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        stopping = False
        try:
            while True:
                for p, proc in enumerate(procs):
                    code = proc.poll()
                    if code is not None and (code != 0 or not stopping):
                        self.reason = f"process {p} (pid {proc.pid}) {describe_exit(code)}"
                        if code == 0:
                            self.reason += " before the job finished"
                        log.error("job failed: %s", self.reason)
                        self._terminate(procs, grace)
                        return code if code > 0 else 1
                if stopping and all(proc.poll() == 0 for proc in procs):
                    return 0
                if not poller.poll(100):
                    continue
                got = S.recv(self.router, router=True)
                if got is None:
                    continue
                ident, msg = got
                if msg.type == C.kConnect:
                    self.book[msg.src.id] = msg.bytes(0).decode()
                    self.idents[msg.src.id] = ident
                    if len(self.book) == self.nprocs:
                        book = json.dumps(self.book).encode()
                        for p, who in self.idents.items():
                            S.send(self.router, Msg(Addr.stub(-1), Addr.stub(p), C.kConnect)
                                   .add_bytes(book), to=who)
                elif msg.type == C.kStop:
                    self.done.add(msg.src.id)
                    if len(self.done) == self.nprocs and not stopping:
                        stopping = True
                        for p, who in self.idents.items():
                            S.send(self.router, Msg(Addr.stub(-1), Addr.stub(p), C.kStop), to=who)
        except KeyboardInterrupt:
            self.reason = "interrupted"
            self._terminate(procs, grace)
            return 130
        finally:
            self.router.close()
            self.ctx.term()

    @staticmethod
    def _terminate(procs: list[subprocess.Popen], grace: float) -> None:
        """TERM to every process group, then KILL those still alive."""
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
