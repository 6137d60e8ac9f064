"""A job of one process (one worker, one server) run in this process, as
SINGA's `Driver::Train` and `Driver::Test` do.

`train(job)` builds the worker and its parameter service, sets up resume
(the latest `step<N>` checkpoints of the workspace become `checkpoint_path`
and `job.step = N`), and runs the loop. `test(job)` loads `checkpoint_path`
into a test net and runs `test_steps` batches.

The distributed runtime replaces the LocalServer with the stub and servers;
the Worker does not change.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from conf import job_pb2
from runtime import checkpoint
from runtime.errors import UserError
from runtime.model.updater import create_updater
from runtime.ps.local_server import LocalServer
from runtime.train.algorithms import create_worker
from runtime.train.worker import Worker


def prepare_workspace(job: job_pb2.JobProto) -> None:
    ws = job.cluster.workspace
    if not ws:
        raise UserError("cluster.workspace is not set")
    try:
        Path(ws).mkdir(mode=0o700, parents=True, exist_ok=True)  # private, like its files
    except OSError as e:
        raise UserError(f"cannot create workspace {ws}: {e.strerror}") from None


def setup_resume(job: job_pb2.JobProto) -> dict | None:
    """Point the job at the latest checkpoint of its workspace (SINGA's -resume)."""
    found = checkpoint.latest(job.cluster.workspace)
    if found is None:
        raise UserError(f"--resume: no checkpoint in {checkpoint.checkpoint_dir(job.cluster.workspace)}")
    step, files = found
    del job.checkpoint_path[:]
    job.checkpoint_path.extend(files)
    job.step = step
    if not job.HasField("reset_param_version"):
        job.reset_param_version = False
    return checkpoint.load_resume_state(files[0])


def build(job: job_pb2.JobProto, log: Callable[[str], None] | None = None,
          threaded: bool | None = None,
          on_worker: Callable[[Worker], None] | None = None) -> tuple[Worker, LocalServer]:
    """The worker of a single-process job and its parameter service, set up
    (nets built, params registered) but not initialised.

    `on_worker(worker)` is called with the worker as soon as it is built,
    before its setup (the multi-process node uses it to report the worker's
    metrics and step to the job master).

    `threaded`: whether updates run in a server thread, overlapping the
    backward pass. By default only when a core is left over by BLAS's
    threads: otherwise the server thread and BLAS take turns on the same
    cores, and a BLAS thread that waits for its core stalls the others
    (measured on 2 cores: 10-15% slower steps for the MLP and LeNet).
    """
    import os

    updater = create_updater(job.updater)
    # a process of a submitted job runs with the cores it was given (SINGA_CORES,
    # set by its master with OPENBLAS_NUM_THREADS), not the conf's number
    blas_threads = max(1, int(os.environ.get("SINGA_CORES") or job.num_openblas_threads))
    # the updater's elementwise work uses as many threads as BLAS does
    updater.threads = blas_threads
    if threaded is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        # a process of a submitted job has the cores it was given, not the host's
        cores = int(os.environ.get("SINGA_CORES") or cores)
        threaded = cores > blas_threads
    server = LocalServer(updater, threaded=threaded)
    worker = create_worker(job, server, log=log)
    if on_worker is not None:
        on_worker(worker)
    try:
        worker.setup()
    except BaseException:
        server.close()
        raise
    server.register(worker.train_net.params)
    return worker, server


def train(job: job_pb2.JobProto, resume: bool = False,
          log: Callable[[str], None] | None = None,
          on_worker: Callable[[Worker], None] | None = None) -> Worker:
    """Train the job in this process; returns the finished worker.
    `on_worker(worker)` is called once the worker is built (see `build`)."""
    prepare_workspace(job)
    resume_state = setup_resume(job) if resume else None
    worker, server = build(job, log, on_worker=on_worker)
    try:
        worker.init_params(resume_state)
        if resume:
            worker.log(f"Resumed from step {job.step}")
        worker.run()
    finally:
        server.close()
    return worker


def test(job: job_pb2.JobProto, log: Callable[[str], None] | None = None,
         on_worker: Callable[[Worker], None] | None = None) -> dict:
    """SINGA's -test mode: load `checkpoint_path`, run `test_steps` test batches.
    `on_worker(worker)` is called once the worker is built, before its nets."""
    from runtime.neuralnet.net import NeuralNet

    if not job.checkpoint_path:
        raise UserError("test mode needs checkpoint_path (or --resume to use the latest checkpoint)")
    if job.test_steps <= 0:
        raise UserError(f"test mode needs test_steps > 0, got {job.test_steps}")
    worker = create_worker(job, LocalServer(None), log=log)
    if on_worker is not None:
        on_worker(worker)
    worker.test_net = NeuralNet.create(job.neuralnet, job_pb2.kTest)
    worker.test_net.set_rng(worker.test_rng)
    # params come from the checkpoint only: the test net owns them
    worker.train_net = worker.test_net
    worker.init_params()
    try:
        return worker.test(job.step, job.test_steps, job_pb2.kTest, worker.test_net, "Test")
    finally:
        worker.test_net.close()
