"""`singa submit` and `singa test`: run a job in the foreground.

The job is validated here first (problems: exit 2, nothing started); then one
runtime process (`python -m runtime.main`) runs it, with the BLAS thread count
of `num_openblas_threads`, and its progress lines stream to this terminal.
The exit code is the runtime's: 0 when the job finished.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import click

from runtime import plugins
from runtime.config import load_job


def _run(conf: str, resume: bool, test: bool, modules: tuple[str, ...] = ()) -> int:
    plugins.load(modules)
    job = load_job(conf, submit=True)
    for w in job.warnings:
        click.echo(str(w), err=True)
    threads = str(max(1, job.proto.num_openblas_threads))
    env = dict(os.environ, OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads,
               MKL_NUM_THREADS=threads)
    cmd = [sys.executable, "-m", "runtime.main", os.path.abspath(conf)]
    if resume:
        cmd.append("--resume")
    if test:
        cmd.append("--test")
    for m in modules:
        cmd += ["--module", os.path.abspath(m) if m.endswith(".py") else m]
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum, frame):  # stopping the CLI stops the job it runs
        proc.send_signal(signum)

    old = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                continue  # the child got the same Ctrl-C; wait for it to clean up
    finally:
        signal.signal(signal.SIGTERM, old)


def _conf_arg(conf: str | None, conf_opt: str | None) -> str:
    path = conf or conf_opt
    if not path:
        raise click.UsageError("give the job.conf: singa submit JOB.conf (or -conf JOB.conf)")
    return path


@click.command()
@click.argument("conf", required=False, type=click.Path())
@click.option("-conf", "conf_opt", type=click.Path(), help="The job.conf, as SINGA's singa-run.sh takes it.")
@click.option("--resume", "-resume", is_flag=True, help="Continue from the latest checkpoint in the workspace.")
@click.option("--test", "-test", is_flag=True, help="Test mode: load checkpoint_path and run test_steps batches.")
@click.option("--module", "modules", multiple=True, metavar="MODULE",
              help="Import a module (dotted name or .py file) that registers user layers, "
                   "updaters or algorithms; repeatable.")
def submit(conf: str | None, conf_opt: str | None, resume: bool, test: bool,
           modules: tuple[str, ...]) -> None:
    """Validate JOB.conf and run it, streaming its progress."""
    sys.exit(_run(_conf_arg(conf, conf_opt), resume, test, modules))


@click.command()
@click.argument("conf", required=False, type=click.Path())
@click.option("-conf", "conf_opt", type=click.Path(), help="The job.conf.")
@click.option("--resume", "-resume", is_flag=True, help="Test the latest checkpoint of the workspace.")
@click.option("--module", "modules", multiple=True, metavar="MODULE",
              help="Import a module (dotted name or .py file) that registers user layers, "
                   "updaters or algorithms; repeatable.")
def test(conf: str | None, conf_opt: str | None, resume: bool, modules: tuple[str, ...]) -> None:
    """Test a trained model: load checkpoint_path, run test_steps test batches."""
    sys.exit(_run(_conf_arg(conf, conf_opt), resume, True, modules))
