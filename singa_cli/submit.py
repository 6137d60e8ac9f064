"""`singa submit` and `singa test`: submit a job and follow it.

Problems with the conf, the hosts or the placement end the command with exit
code 2 before anything exists. Otherwise the job gets an id in the registry,
a detached job master launches its processes, and the command follows
process 0's log (with a live progress line on a terminal) until the job
ends: exit 0 only if it SUCCEEDED. `--detach` returns at once. Ctrl-C (or
TERM) while following stops the job; closing the terminal does not.
"""
from __future__ import annotations

import sys

import click

from singa_cli.options import module_option, proto_option


def _conf_arg(conf: str | None, conf_opt: str | None) -> str:
    path = conf or conf_opt
    if not path:
        raise click.UsageError("give the job.conf: singa submit JOB.conf (or -conf JOB.conf)")
    return path


def _run(conf: str, detach: bool, execs: tuple[str, ...] = (), protos: tuple[str, ...] = (),
         **kw) -> int:
    from runtime import plugins
    from runtime.jobs import jobdb
    from runtime.jobs.submit import SubmitOptions
    from runtime.jobs.submit import submit as submit_job
    from singa_cli.follow import follow

    # protos first: the [ext] blocks of the conf and the user's modules need them
    kw["modules"] = plugins.with_protos(protos, tuple(execs) + tuple(kw.get("modules", ())))
    opts = SubmitOptions(**kw, warn=lambda line: click.echo(line, err=True))
    reg = jobdb.JobDB()
    job_id = submit_job(conf, opts, reg)
    if detach:
        click.echo(f"Submitted job {job_id}")
        click.echo(f"  singa view {job_id}     its state and processes\n"
                   f"  singa log {job_id} -f   its log as it grows\n"
                   f"  singa kill {job_id}     stop it", err=True)
        return 0
    click.echo(f"Submitted job {job_id} (singa view {job_id}; Ctrl-C stops it, "
               "--detach leaves it running)", err=True)
    return follow(reg, job_id, grace=opts.grace)


_COMMON = [
    click.option("-H", "--hostfile", type=click.Path(), default=None,
                 help="Hosts to run on: 'host', 'host slots=N' a line; # comments."),
    click.option("--hosts", default=None, metavar="H:N,...", help="Hosts inline: h1:2,h2:2."),
    click.option("--launcher", type=click.Choice(["local", "ssh", "slurm", "mpi"]), default=None,
                 help="How processes start: local, ssh (default when a host is remote), "
                      "slurm (sbatch + srun), mpi (mpirun)."),
    click.option("--slurm-opt", default=None, metavar="'OPTS'",
                 help="sbatch options for --launcher slurm, one quoted string: "
                      "'--partition=debug --time=10' (srun's inside an allocation)."),
    click.option("--oversubscribe", is_flag=True, help="Allow more processes than slots."),
    click.option("--ssh-port", type=int, default=None, help="sshd's port on the hosts."),
    click.option("--ssh-identity", type=click.Path(), default=None, help="ssh private key file."),
    click.option("--ssh-config", type=click.Path(), default=None, help="ssh client config (ssh -F)."),
    click.option("--interface", default=None, envvar="SINGA_INTERFACE",
                 help="Network interface whose address this host advertises (SINGA_INTERFACE)."),
    module_option(
                 help="Import a module (dotted name or .py file) that registers user layers, "
                      "updaters or algorithms, in every process; repeatable."),
    proto_option(
                 help="A .proto of the user's own config messages (extending LayerProto, "
                      "UpdaterProto, ...): compiled, loaded here and shipped to every process; "
                      "repeatable."),
    click.option("--exec", "execs", multiple=True, metavar="MAIN.py",
                 help="The user's main file (SINGA's -exec): imported in every process like "
                      "--module, so the classes it registers are known there; its "
                      "`if __name__ == '__main__':` part does not run there."),
    click.option("--name", default=None, help="The job's name in singa list (default: the conf's name)."),
    click.option("--cores", "-c", type=click.IntRange(1), default=None, metavar="N",
                 help="Cores (BLAS threads) per process; default: the conf's "
                      "num_openblas_threads when set, else 1 (see the README's Queue)."),
    click.option("--priority", type=int, default=0, show_default=True,
                 help="Queue priority: higher starts first; FIFO within a priority."),
    click.option("--after", multiple=True, metavar="JOB[:ok|:any]",
                 help="Start once JOB has SUCCEEDED (:ok, the default) or ended at all (:any); "
                      "repeatable. If it cannot hold, the job is CANCELLED and never starts."),
    click.option("--grace", type=float, default=5.0, show_default=True,
                 help="Seconds between TERM and KILL when the job's processes are stopped."),
]


_DETACH = click.option("--detach", "-d", is_flag=True, help="Return once the job is submitted.")


def submit_options(f):
    """Apply `_COMMON`, the options of every verb that submits jobs (submit,
    test, sweep): hosts, launcher, the user's code, name, cores, priority,
    dependencies, grace."""
    for opt in reversed(_COMMON):
        f = opt(f)
    return f


def _with_common(f):
    # --detach last in the help, after the options every submitting verb shares
    return submit_options(_DETACH(f))


@click.command()
@click.argument("conf", required=False, type=click.Path())
@click.option("-conf", "conf_opt", type=click.Path(), help="The job.conf, as SINGA's singa-run.sh takes it.")
@click.option("--resume", "-resume", is_flag=True,
              help="Continue from the latest checkpoint in the workspace.")
@click.option("--test", "-test", is_flag=True,
              help="Test mode: load checkpoint_path and run test_steps batches.")
@click.option("--max-restarts", type=click.IntRange(0), default=0, show_default=True,
              help="Relaunch a failed job from its latest checkpoint up to N times.")
@_with_common
def submit(conf, conf_opt, detach, **kw) -> None:
    """Validate JOB.conf, launch it on the hosts and follow it."""
    sys.exit(_run(_conf_arg(conf, conf_opt), detach, **kw))


@click.command()
@click.argument("conf", required=False, type=click.Path())
@click.option("-conf", "conf_opt", type=click.Path(), help="The job.conf.")
@click.option("--resume", "-resume", is_flag=True, help="Test the latest checkpoint of the workspace.")
@_with_common
def test(conf, conf_opt, detach, **kw) -> None:
    """Test a trained model: load checkpoint_path, run test_steps test batches."""
    sys.exit(_run(_conf_arg(conf, conf_opt), detach, test=True, **kw))
