"""`singa`: submit, validate and inspect jobs, import data.

Every verb lives in its own module and is loaded only when it is used, so
that `singa list` or `singa --help` never pays for numpy, protobuf or zmq:
`COMMANDS` maps each verb to `"module:attribute"` and a short help string
(shown by `singa --help` without importing the module). A verb whose module
is missing from this copy of singa fails only when it is used, with a
message that names the module.

A `UserError` raised anywhere below ends the command with its message on
stderr and exit code 2 (click's convention for usage errors), never with a
traceback.
"""
from __future__ import annotations

import importlib
import sys

import click

from runtime.errors import UserError

#: verb -> (where its click command lives, its short help for `singa --help`).
COMMANDS: dict[str, tuple[str, str]] = {
    "submit": ("singa_cli.submit:submit", "Validate JOB.conf and run it, streaming its progress."),
    "test": ("singa_cli.submit:test", "Test a trained model from its checkpoint."),
    "sweep": ("singa_cli.sweep:sweep", "Submit a job per point of a sweep of conf fields; show "
                                       "the results, best first."),
    "list": ("singa_cli.jobs:list_jobs", "List jobs: the active ones unless --all or --state."),
    "view": ("singa_cli.jobs:view", "Show a job, each of its processes, and why it failed."),
    "status": ("singa_cli.jobs:status", "Same as view: show a job and its processes."),
    "log": ("singa_cli.control:log", "Print or follow the log of one process of a job."),
    "kill": ("singa_cli.control:kill", "Stop a job: TERM to its process groups, then KILL."),
    "hosts": ("singa_cli.hosts:hosts", "Show the hosts, their slots and what jobs hold; check a hostfile."),
    "plot": ("singa_cli.plot:plot", "Plot a job's training and test curves to a PNG or SVG."),
    "ui": ("singa_cli.ui:ui", "Serve the web dashboard: jobs, curves, logs, compare; prints its URL."),
    "top": ("singa_cli.top:top", "A live table of a job's processes: speed, CPU, memory, stragglers."),
    "draw": ("singa_cli.draw:draw", "Draw a job's net graph or a checkpoint's filters as a PNG."),
    "validate": ("singa_cli.validate:validate", "Check a job.conf and print what the job is."),
    "export": ("singa_cli.export:export", "Run a Python file that builds a job and write its job.conf."),
    "data": ("singa_cli.data:data", "Import datasets into record files (kvfile of RecordProto)."),
}


def _load(name: str, target: str) -> click.Command:
    """Import the command `target` ("module:attribute") of verb `name`."""
    module, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        # Only the verb's own module being absent is "not available"; a module that
        # exists but imports something missing is a real bug and keeps its traceback.
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            raise
        raise UserError(f"'singa {name}' is not available in this copy of singa: its module "
                        f"{module} was not found") from None
    cmd = getattr(mod, attr, None)
    if not isinstance(cmd, click.Command):
        raise UserError(f"'singa {name}' is not available in this copy of singa: "
                        f"{module} has no command {attr!r}")
    return cmd


class SingaGroup(click.Group):
    """The `singa` group: verbs loaded on first use; a UserError exits 2 with its message."""

    lazy: dict[str, tuple[str, str]] = COMMANDS

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.lazy) + [n for n in sorted(self.commands) if n not in self.lazy]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        if name not in self.lazy:
            return None
        cmd = _load(name, self.lazy[name][0])
        self.commands[name] = cmd  # not add_command: the verb keeps the name it is called by
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # The hard-coded short help, so `singa --help` imports none of the verbs.
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy:
                rows.append((name, self.lazy[name][1]))
            elif not self.commands[name].hidden:
                rows.append((name, self.commands[name].get_short_help_str(formatter.width)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"singa: {e}" if "\n" not in str(e) else str(e), err=True)
            sys.exit(2)


@click.group(cls=SingaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="singa")
def cli() -> None:
    """A distributed deep learning platform in the model of Apache SINGA."""


if __name__ == "__main__":
    cli()
