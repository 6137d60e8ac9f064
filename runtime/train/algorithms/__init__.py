"""TrainOneBatch algorithms: Worker subclasses registered in `alg_registry`
(with their base class, runtime.train.worker) by AlgType -- BP, BPTT, CD.
Importing this package registers every built-in algorithm; `create_worker`
makes the registered one a job asks for (a user's, kUserAlg, by name)."""
from __future__ import annotations

from collections.abc import Callable

from conf import job_pb2
from runtime.train.algorithms import bp, bptt, cd  # noqa: F401 - each registers itself
from runtime.train.worker import ParamChannel, Worker, alg_registry


def create_worker(job: job_pb2.JobProto, channel: ParamChannel, grp_id: int = 0,
                  worker_id: int = 0, log: Callable[[str], None] | None = None) -> Worker:
    """The registered Worker subclass for the job's `train_one_batch`."""
    alg = job.train_one_batch
    cls = alg_registry.lookup(alg.alg, alg.user_alg if alg.alg == job_pb2.kUserAlg else "")
    return cls(job, channel, grp_id, worker_id, log)
