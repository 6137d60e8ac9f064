"""The entry point of one runtime process (SINGA's `singa` binary).

    python -m runtime.main JOB.conf [--resume] [--test] [--module M ...]

It loads and validates the job, then trains (or tests) it in this process.
The CLI starts it as a child process, so that the BLAS thread count
(`num_openblas_threads`) is set before numpy loads and so that the CLI never
shares a process with training. Exit codes: 0 done, 2 bad input (message on
stderr), 1 an unexpected failure (traceback on stderr, for the log).
"""
from __future__ import annotations

import argparse
import signal
import sys


def _terminate_as_interrupt(signum, frame) -> None:
    # TERM (from `singa submit` being stopped, or a kill) ends the job the way
    # Ctrl-C does: the master stops every process group it started.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    ap = argparse.ArgumentParser(prog="python -m runtime.main")
    ap.add_argument("conf")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--test", action="store_true")
    ap.add_argument("--module", action="append", default=[])
    args = ap.parse_args(argv)

    from runtime import driver, plugins
    from runtime.cluster import Cluster
    from runtime.config import load_job
    from runtime.jobs.local import launch
    from runtime.errors import UserError
    from runtime.worker import log_to_stdout

    try:
        plugins.load(args.module)
        job = load_job(args.conf, submit=True).proto
        cluster = Cluster.from_proto(job.cluster)
        if cluster.nworkers > 1 or cluster.nservers > 1 or cluster.nprocs > 1:
            if args.resume or args.test:
                raise UserError("--resume and --test of a job with several workers or servers "
                                "are not implemented yet")
            driver.prepare_workspace(job)
            return launch(job, tuple(args.module))
        if args.test:
            if args.resume:
                driver.setup_resume(job)
            driver.test(job, log=log_to_stdout)
        else:
            driver.train(job, resume=args.resume, log=log_to_stdout)
    except UserError as e:
        print(f"singa: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
