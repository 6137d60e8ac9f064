"""The job master: one detached process per job that runs it to its end.

    python -m runtime.jobs.master JOB_ID      (started by `singa submit`)

It is the only writer of a running job's registry rows besides `singa kill`.
A job that was queued (QUEUED) has its master wait on the registry first
(`wait_for_admission`): it beats, runs queue passes now and then, and goes
on once a pass has admitted the job (PENDING), or stops if the job was
killed or cancelled meanwhile. Then, for each attempt, it:

1. binds its ROUTER where the OS picks (ipc:// when every process is on this
   host; tcp:// on the advertised address, with CurveZMQ, across hosts),
2. launches every process of the placement (`runtime.jobs.launcher`), each
   with its log file, the job and the keys on its stdin,
3. collects each process's kConnect (endpoint, pid, pgid, start time), and
   when all have come sends everyone the address book: the start barrier;
   the job is RUNNING,
4. hears heartbeats (every second, answered) and metrics, and records the
   step, loss, accuracy and samples/s, and its own heartbeat (a master not
   heard from for `registry.MASTER_SILENT_S` makes the job LOST),
5. when every process has said its workers are done (kStop), tells them all
   to stop; the job SUCCEEDED when all exit 0.

A process that exits otherwise, or misses three heartbeats, or never
connects, fails the attempt: the others are stopped (TERM to each process
group on its host, KILL after the grace period) and the job is FAILED with a
reason naming the process, its host and its exit, or relaunched from the
latest checkpoint while restarts are left (`--max-restarts`). A process
that ends on an error first says why (kFail, answered with a kFail): the
reason then ends with that line ("diverged: loss is nan at step 100 ...",
"RuntimeError: boom"); for a process that could not say, with the last
error line of its log. TERM to the
master, or `singa kill` marking the job KILLED, stops every process the
same way.

The rules of steps 3 to 5 (what a message, an exit or the time means) are
`runtime.jobs.supervisor.Supervisor`, without IO; this module polls the
sockets and processes, feeds it and carries out its actions. The launcher
builds itself from the job's options (`runtime.jobs.launcher`).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

from conf import job_pb2
from runtime.comm import socket as zsock
from runtime.comm.msg import Msg
from runtime.errors import UserError
from runtime.jobs import jobdb
from runtime.jobs.launcher import (
    EngineHandle,
    EngineLauncher,
    Handle,
    JobFiles,
    Launcher,
    ProcSpec,
    SshHandle,
    handoff,
)
from runtime.jobs.launchers import launcher_registry
from runtime.jobs.metrics import MetricsWriter
from runtime.jobs.ssh import SSH_FAILED
from runtime.jobs.supervisor import (
    Action,
    Learned,
    Outcome,
    Progress,
    Send,
    Supervisor,
    Transition,
    UpdateProc,
    Verdict,
    WriteMetric,
)

if TYPE_CHECKING:
    from runtime.comm.security import JobKeys

log = logging.getLogger("singa.master")

GRACE_S = 5.0
#: Seconds between the queue passes a waiting master runs itself.
QUEUE_PASS_S = 1.0


def batch_size(job: job_pb2.JobProto) -> int:
    """Samples per step of one worker group: the train input layer's batchsize."""
    for layer in job.neuralnet.layer:
        if layer.include and job_pb2.kTrain not in layer.include:
            continue
        for fd, value in layer.ListFields():
            size = getattr(value, "batchsize", 0) if fd.message_type is not None else 0
            if not isinstance(size, int):  # StoreProto's is repeated (one per phase)
                size = size[0] if len(size) else 0
            if size > 0:
                return size
    return 0


class JobMaster:
    def __init__(self, reg: jobdb.JobDB, job_id: int):
        self.reg = reg
        self.id = job_id
        self.row = reg.job(job_id)
        self.opts = self.row.options
        self.job = job_pb2.JobProto.FromString((Path(self.row.log_dir) / "job.pb").read_bytes())
        self.hosts: list[str] = list(self.row.hosts)
        self.stop_signal: int | None = None
        self.samples_per_step = batch_size(self.job) * max(1, self.job.cluster.nworker_groups)
        self.grace = float(self.opts.get("grace", GRACE_S))
        self.metrics = MetricsWriter(self.job.cluster.workspace, batch_size(self.job))
        from runtime.jobs.tensorboard import TensorBoardSink

        self.tensorboard = TensorBoardSink(self.job.cluster.workspace)
        self.metrics.add_sink(self.tensorboard)

    # ---------------------------------------------------------------- run ---
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the submitting terminal may go
        resume = bool(self.opts.get("resume"))
        if not self.wait_for_admission():
            return 1
        missing = [p for p in self.job.checkpoint_path if not os.path.exists(p)]
        if missing:  # a job run --after another: that one was to write them
            self.reg.transition(self.id, jobdb.FAILED, f"checkpoint_path {missing[0]} does not "
                                "exist; the job this one ran after did not write it")
            return 1
        try:
            while True:
                attempt = self.reg.begin_attempt(self.id)
                try:
                    out = self.run_attempt(attempt, resume)
                finally:
                    self.metrics.flush()
                    self.tensorboard.flush()
                log.info("attempt %d: %s %s", attempt, out.state, out.reason)
                if out.state != "RESTART":
                    return 0 if out.state == "SUCCEEDED" else 1
                resume = self._can_resume()
        finally:
            # the job's ipc sockets (zsock.ipc_dir, handed down in _env), whatever the end
            zsock.remove_ipc_dir()

    def wait_for_admission(self) -> bool:
        """Wait while the job is QUEUED; True once it is admitted, False if it
        ended meanwhile (killed, cancelled, found LOST). A signal (Ctrl-C on
        the submitting terminal, `singa kill`) withdraws it."""
        last_beat = last_pass = 0.0
        while True:
            if self.stop_signal is not None:
                self.reg.transition(self.id, jobdb.KILLED, "withdrawn while queued (the job master "
                                    f"got {signal.Signals(self.stop_signal).name})")
                return False
            now = time.monotonic()
            if now - last_beat >= 1.0:
                last_beat = now
                state = self.reg.master_beat(self.id)
            else:
                state = self.reg.state(self.id)
            if state != jobdb.QUEUED:
                return state not in jobdb.TERMINAL
            if now - last_pass >= QUEUE_PASS_S:
                last_pass = now
                # whoever ended a job ran a pass; this one covers a master that died
                for j in self.reg.jobs([jobdb.PENDING, jobdb.RUNNING]):
                    self.reg.reconcile(j)
                self.reg.schedule()
            time.sleep(0.1)

    def _settle(self, attempt: int, out: Outcome) -> Outcome:
        """Record how the attempt ended: the job's final state, or (a failure
        while restarts are left) RESTART with the reason noted."""
        if out.state == "FAILED" and self.stop_signal is None \
                and attempt <= self.row.max_restarts and not self._killed():
            self.reg.note(self.id, f"attempt {attempt} failed: {out.reason}; restarting "
                          f"(attempt {attempt + 1} of {self.row.max_restarts + 1})")
            return Outcome("RESTART", out.reason)
        # the others are stopped next (up to the grace): their slots are held till then
        hold = 0.0 if out.state == "SUCCEEDED" else self.grace + 5.0
        self.reg.transition(self.id, out.state, out.reason, hold=hold)
        return out

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop_signal = signum

    def _killed(self) -> bool:
        return self.reg.job(self.id).state == jobdb.KILLED

    def _can_resume(self) -> bool:
        from runtime import checkpoint

        return checkpoint.latest(self.job.cluster.workspace) is not None

    # ------------------------------------------------------------ attempt ---
    def run_attempt(self, attempt: int, resume: bool) -> Outcome:
        from runtime.jobs import hostfile

        remote = [h for h in self.hosts if not hostfile.is_local(h)]
        keys = None
        if remote:
            from runtime.comm.security import Guard, JobKeys

            keys = JobKeys.from_dict(self.row.secret["curve"])
        ctx = zmq.Context()
        guard = Guard(ctx, keys) if keys is not None else None
        router = zsock.router(ctx, keys=keys)
        if remote:
            launcher = self._launcher()
            if isinstance(launcher, EngineLauncher) and launcher.chooses_hosts:
                # the hosts are not known yet: the engine knows the network of its nodes
                addr = launcher.advertise(self.opts.get("interface"))
            else:
                addr = hostfile.advertise_address(peer=remote[0], interface=self.opts.get("interface"))
            endpoint = zsock.bind(router, "tcp", host=addr, name="master")
        else:
            endpoint = zsock.bind(router, "ipc", name="master")
        handles: list[Handle] = []
        try:
            try:
                handles = self._launch(attempt, endpoint, resume, keys)
            except UserError as e:  # e.g. sbatch refused the job
                return self._settle(attempt, Outcome("FAILED", str(e)))
            out = self._serve(attempt, router, handles)
            # the job's state is written before the others are stopped: a
            # failure shows at once, not after the grace period
            return self._settle(attempt, out)
        finally:
            self._stop_all(attempt, handles)
            self.reg.release(self.id)  # every process has stopped: the slots pass on
            router.close()
            if guard is not None:
                guard.stop()
            ctx.term()

    def _launch(self, attempt: int, endpoint: str, resume: bool, keys: JobKeys | None) -> list[Handle]:
        adir = Path(self.row.log_dir) / f"attempt-{attempt}"
        adir.mkdir(mode=0o700, parents=True, exist_ok=True)
        launcher = self._launcher()
        if isinstance(launcher, EngineLauncher):
            files = self._job_files(attempt, keys)
            adir = files.log_pattern.parent
        from runtime.jobs import code

        data = handoff(self.job.SerializeToString(), keys.to_dict() if keys is not None else None,
                       code.pack(Path(self.row.log_dir) / "code"))
        specs = []
        for p, host in enumerate(self.hosts):
            log_path = adir / f"procs-{p}.log"
            self.reg.add_proc(self.id, attempt, p, host=host, role=self._role(p), log_path=str(log_path))
            argv = [sys.executable, "-m", "runtime.train.node", "--job-id", str(self.id),
                    "--procs", str(p), "--master", endpoint, "--log", str(log_path)]
            if resume:
                argv.append("--resume")
            if self.opts.get("test"):
                argv.append("--test")
            for m in self.opts.get("modules", []):
                argv += ["--module", m]
            specs.append(ProcSpec(p, host, argv, self._env(host), data, log_path,
                                  adir / f"procs-{p}.launch.log",
                                  cwd=self.opts.get("cwd") or os.getcwd()))
        if isinstance(launcher, EngineLauncher):
            handles = launcher.start_all(specs, files)
            if launcher.external_id:
                self.reg.set_external_id(self.id, launcher.external_id)
            return handles
        handles = []
        for spec in specs:
            h = launcher.start(spec)
            handles.append(h)
            self.reg.update_proc(self.id, attempt, spec.procs, pid=h.pid, pgid=h.pgid,
                                 start_time=h.start_time)
        return handles

    def _job_files(self, attempt: int, keys: JobKeys | None) -> JobFiles:
        """For an engine's processes: the job and its keys (0600) and their
        logs, in the workspace, which every node of the job must share."""
        shared = Path(self.job.cluster.workspace) / f"singa-job-{self.id}"
        adir = shared / f"attempt-{attempt}"
        adir.mkdir(mode=0o700, parents=True, exist_ok=True)
        job_file = shared / "job.pb"
        bundle = Path(self.row.log_dir) / "code"
        if bundle.is_dir():  # the user's code, beside the job, for every node
            shutil.rmtree(shared / "code", ignore_errors=True)
            shutil.copytree(bundle, shared / "code")
        for path, data in ((job_file, self.job.SerializeToString()),
                           (Path(str(job_file) + ".keys"),
                            json.dumps(keys.to_dict()).encode() if keys is not None else None)):
            if data is None:
                continue
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, "wb") as f:
                f.write(data)
        return JobFiles(job_file, adir / "procs-%t.log")

    def _launcher(self) -> Launcher:
        """The job's launcher, built from its options (an unknown name lists the known ones)."""
        cls = launcher_registry.get(self.opts.get("launcher", "local"))
        launcher: Launcher = cls.from_options(self.row, self.opts)
        return launcher

    def _env(self, host: str) -> dict[str, str]:
        """A process's environment: its BLAS threads are the cores the job
        holds on its host (`demand`), so jobs sharing a host never
        oversubscribe it; with no demand (an engine's job) the conf's."""
        from runtime.jobs.resources import host_key

        held = self.row.demand.get(host_key(host))
        # an engine's job: the cores its tasks were given (`--cpus-per-task`)
        asked = self.opts.get("slurm", {}).get("threads")
        threads = int(held["threads"]) if held else int(asked or max(1, self.job.num_openblas_threads))
        env = {k: str(threads) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        env["SINGA_CORES"] = str(threads)  # the node's own threads (runtime.train.single) fit in them
        if all(_is_local(h) for h in self.hosts):  # the processes bind ipc:// sockets
            env[zsock.IPC_DIR_ENV] = zsock.ipc_dir()
        for k, v in os.environ.items():
            # what shapes numerics and debugging travels with the job to every host
            if k.startswith(("SINGA_", "OPENBLAS_CORETYPE")) or k == "PYTHONPATH":
                env.setdefault(k, v)
        return env

    def _role(self, p: int) -> str:
        from runtime.cluster import Cluster

        if self.opts.get("test"):
            return "test"
        c = Cluster.from_proto(self.job.cluster)
        parts = [f"worker {g}/{w}" for g, w in c.workers_of_procs(p)]
        parts += [f"server {g}/{s}" for g, s in c.servers_of_procs(p)]
        return ", ".join(parts) or "-"

    # -------------------------------------------------------------- serve ---
    def _serve(self, attempt: int, router: zmq.Socket[bytes], handles: list[Handle]) -> Outcome:
        """Poll the ROUTER and the processes, feed a `Supervisor` and carry
        out its actions until it (or a signal, or the registry) ends the attempt."""
        sup = Supervisor(len(handles), time.monotonic(), self.samples_per_step)
        last_check = last_wait = 0.0
        waiting: str | None = None
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        while True:
            now = time.monotonic()
            if self.stop_signal is not None:
                return Outcome("KILLED", f"the job master got {signal.Signals(self.stop_signal).name}")
            if now - last_check >= 1.0:
                last_check = now
                self.metrics.flush()
                state = self.reg.master_beat(self.id)
                if state == jobdb.KILLED:
                    return Outcome("KILLED")
                if state in jobdb.TERMINAL:  # found LOST (this master was frozen): make it true
                    return Outcome(state)
            if handles and now - last_wait >= 1.0:
                last_wait = now
                waiting = self._waiting(handles[0], waiting)
                if waiting is not None:  # in the engine's queue: the connect timeout waits too
                    sup.started = now
            actions = []
            for p, h in enumerate(handles):
                code = h.poll()
                if code is not None:
                    actions += sup.on_exit(p, code, now)
            events = router.getsockopt(zmq.EVENTS)
            behind = isinstance(events, int) and bool(events & zmq.POLLIN)
            actions += sup.check(now, behind)
            out = self._act(attempt, router, handles, actions)
            if out is not None:
                return out
            if not poller.poll(100):
                continue
            got = zsock.recv(router, router=True)
            if got is None:
                continue
            ident, msg = got
            if ident is None:
                continue  # a ROUTER always gives the sender's identity
            out = self._act(attempt, router, handles, sup.on_message(ident, msg, time.monotonic()))
            if out is not None:
                return out

    def _waiting(self, h: Handle, before: str | None) -> str | None:
        """Mirror an engine's queue (Slurm's pending job) in the job's state:
        QUEUED with the engine's reason while it waits, PENDING again once it
        starts. Returns the reason now (None: not waiting)."""
        why = h.waiting()
        if why != before:
            if why is not None:
                self.reg.transition(self.id, jobdb.QUEUED, why)
            elif self.reg.state(self.id) == jobdb.QUEUED:
                self.reg.transition(self.id, jobdb.PENDING)
        return why

    def _act(self, attempt: int, router: zmq.Socket[bytes], handles: list[Handle],
             actions: list[Action]) -> Outcome | None:
        """Carry out the Supervisor's actions in order; the Outcome of a Verdict."""
        for a in actions:
            if isinstance(a, Send):
                self._send(router, a.to, a.msg)
            elif isinstance(a, UpdateProc):
                fields = dict(a.fields, heartbeat=time.time()) if a.beat else a.fields
                self.reg.update_proc(self.id, attempt, a.procs, **fields)
            elif isinstance(a, Learned):
                h = handles[a.procs]
                h.learned(a.pid, a.pgid, a.start_time)
                if isinstance(h, EngineHandle):
                    h.reported_host = a.host
                    self.reg.update_proc(self.id, attempt, a.procs, host=h.host)
            elif isinstance(a, Progress):
                self.reg.progress(self.id, a.step, **a.fields)
            elif isinstance(a, Transition):
                self.reg.transition(self.id, a.state)
            elif isinstance(a, WriteMetric):
                self.metrics.add(a.record)
            elif isinstance(a, Verdict):
                if a.procs is None:
                    return Outcome(a.state, a.reason)
                h = handles[a.procs]
                words = a.words or h.failure(a.exit if a.exit is not None else 1)  # on_exit sets exit
                return Outcome(a.state, self._blame(a.procs, h, words, a.said))
        return None

    @staticmethod
    def _send(router: zmq.Socket[bytes], who: bytes, msg: Msg) -> None:
        try:
            zsock.send(router, msg, to=who)
        except zmq.ZMQError:
            pass  # that process is gone; its exit is seen by poll()

    def _blame(self, p: int, h: Handle, words: str, said: str | None = None) -> str:
        """The reason of a failed attempt: the process, its host, pid and
        role, then the reason it sent (kFail) or else how it ended (`words`)
        and the last error line of its log."""
        pid = f", pid {h.pid}" if h.pid else ""
        if said:
            return f"{h.noun} {p} on {h.host}{pid} ({self._role(p)}): {said}"
        why = f"{h.noun} {p} on {h.host}{pid} ({self._role(p)}) {words}"
        # an engine's logs are on the filesystem its nodes share with this host
        readable = _is_local(h.host) or isinstance(h, EngineHandle)
        last = _last_error(h.spec.log_path) if readable else ""
        return f"{why}: {last}" if last else why

    # --------------------------------------------------------------- stop ---
    def _stop_all(self, attempt: int, handles: list[Handle]) -> None:
        """TERM to every process group still running, on all hosts at once;
        KILL after the grace to what is left. Each process's row says how it
        ended as soon as that is known: KILLED with its exit code or signal, or
        LOST when its host did not answer (its ssh client is stopped at once,
        not waited for); one that had exited by itself with that exit."""
        running = {p: h for p, h in enumerate(handles) if h.poll() is None}
        if len(running) < len(handles):
            rows = {r.procs_id: r for r in self.reg.procs(self.id, attempt)}
            for p, h in enumerate(handles):
                if p not in running and p in rows and not rows[p].terminal:
                    self._ended(attempt, p, h, stopped=False)
        _signal_each(running.values(), signal.SIGTERM)
        for p, h in list(running.items()):
            if h.unreachable:
                self._ended(attempt, p, running.pop(p))
        deadline = time.monotonic() + self.grace
        beat = 0.0
        while running and time.monotonic() < deadline:
            for p, h in list(running.items()):
                if h.poll() is not None:
                    self._ended(attempt, p, running.pop(p))
            if time.monotonic() - beat >= 1.0:  # a long --grace must not read as a frozen master
                beat = time.monotonic()
                self.reg.master_beat(self.id)
            time.sleep(0.05)
        _signal_each(running.values(), signal.SIGKILL)
        for p, h in running.items():
            self._ended(attempt, p, h)

    def _ended(self, attempt: int, p: int, h: Handle, stopped: bool = True) -> None:
        """Record how process `p` ended: signalled by `_stop_all` (KILLED), or
        (`stopped` False) by itself (SUCCEEDED with code 0, else FAILED)."""
        h.close()
        code = h.poll()
        if h.unreachable or (isinstance(h, SshHandle) and code == SSH_FAILED):
            self.reg.update_proc(self.id, attempt, p, state=jobdb.LOST)  # lost with its host
            return
        exit_code, sig = h.exit_of(code) if code is not None else (None, None)
        state = jobdb.KILLED if stopped else jobdb.SUCCEEDED if code == 0 else jobdb.FAILED
        self.reg.update_proc(self.id, attempt, p, state=state, exit_code=exit_code, signal=sig)


def _signal_each(handles: Iterable[Handle], sig: int) -> None:
    """Send `sig` to every handle at once: signalling a remote process is an
    ssh call, and one host that does not answer must not delay the others."""
    handles = list(handles)
    if len(handles) <= 1:
        for h in handles:
            h.signal(sig)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(len(handles), 32)) as pool:
        list(pool.map(lambda h: h.signal(sig), handles))


def _is_local(host: str) -> bool:
    from runtime.jobs import hostfile

    return hostfile.is_local(host)


def _last_error(path: Path) -> str:
    """The last line of a log that reads like an error, for the reason: a
    "singa: ..." line or the exception line of a traceback, whichever comes
    later (a traceback's exception need not say "Error": zipfile.BadZipFile),
    else the last line that mentions an error."""
    from runtime.jobs.logfile import tail_text

    lines = tail_text(path, 8192).splitlines()
    for i in range(len(lines) - 1, -1, -1):
        s = lines[i].strip()
        if s.startswith("singa:"):
            return s
        if s == "Traceback (most recent call last):":
            # the exception is the first line after the frames that is not indented
            found = next((ln.strip() for ln in lines[i + 1:] if ln.strip() and not ln[0].isspace()), "")
            if found:
                return found
    for line in reversed(lines):
        s = line.strip()
        if "Error" in s or "error" in s:
            return s
    return ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.umask(0o077)  # what the master writes into the workspace is private, as in node.py
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s master %(levelname)s %(message)s")
    reg = jobdb.JobDB()
    job_id = int(argv[0])
    try:
        reg.master_beat(job_id)  # first thing: until then a PENDING job has 30 s to show a master
        return JobMaster(reg, job_id).run()
    except BaseException as e:
        # whatever broke the master, the job must not be left RUNNING
        log.exception("job master failed")
        reg.transition(job_id, jobdb.FAILED, f"the job master failed: {e!r}")
        raise


if __name__ == "__main__":
    sys.exit(main())
