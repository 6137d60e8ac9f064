"""Driver: SINGA's Driver for a user's own main program (`main.py`): register
classes, then submit a job as `singa submit` does. The in-process run of a
one-process job is runtime.train.single."""
from __future__ import annotations

from pathlib import Path

from conf import job_pb2


class Driver:
    """SINGA's Driver for a user's own main program: register your classes,
    then submit the job, with the options and behaviour of `singa submit`.

        # main.py
        from runtime.driver import Driver
        from runtime.neuralnet.layer import Layer, layer_registry

        @layer_registry.register("MyLayer")
        class MyLayer(Layer): ...

        if __name__ == "__main__":
            sys.exit(Driver(hosts="node1:2,node2:2").submit("job.conf"))

    `submit(job)` takes a job.conf path or a JobProto built in code. The main
    file itself ships with the job (like `--exec main.py`), so every process
    on every host knows the classes it registers; there it is imported, not
    run, so keep the submit under `if __name__ == "__main__":`. Returns the
    exit code `singa submit` would (0 only if the job SUCCEEDED), or with
    `detach=True` the job id at once.

    Following the job is the `singa` command's own follower
    (singa_cli.follow): the Driver is a front end like the command and
    promises its output byte for byte, so the two share the code rather than
    keep copies. This is the one import of singa_cli from runtime: a front
    end using a front end's module, function-local, only when a job is
    followed; singa_cli.follow imports only runtime.errors, runtime.jobs and
    singa_cli.fmt (never this module), so there is no cycle, and nothing a job's processes import knows about
    terminals. The submit API itself (runtime.jobs.submit) returns data.
    """

    def __init__(self, **options):
        from runtime.jobs.submit import SubmitOptions

        self.options = SubmitOptions(**options)

    def submit(self, job: str | job_pb2.JobProto, detach: bool = False) -> int:
        import dataclasses
        import sys
        import tempfile

        from google.protobuf import text_format

        from runtime.config.paths import resolve_paths
        from runtime.jobs import jobdb
        from runtime.jobs.submit import submit
        from singa_cli.follow import follow

        opts = dataclasses.replace(self.options)
        main = getattr(sys.modules.get("__main__"), "__file__", None)
        if main and main.endswith(".py"):
            # already imported here (as __main__); the job's processes import it
            opts.ship_only = (*opts.ship_only, str(Path(main).resolve()))
        if isinstance(job, job_pb2.JobProto):
            proto = job_pb2.JobProto()
            proto.CopyFrom(job)
            # a job built in code: its relative paths are relative to the cwd
            resolve_paths(proto, str(Path.cwd() / "job.conf"))
            d = Path(tempfile.mkdtemp(prefix="singa-driver-"))
            conf = d / f"{proto.name or 'job'}.conf"
            conf.write_text(text_format.MessageToString(proto))
        else:
            conf = Path(job)
        reg = jobdb.JobDB()
        job_id = submit(str(conf), opts, reg)
        return job_id if detach else follow(reg, job_id, grace=opts.grace)
