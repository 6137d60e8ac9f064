"""`singa`: submit, validate and inspect jobs, import data.

Every verb lives in its own module and is added to the group here. A
`UserError` raised anywhere below ends the command with its message on
stderr and exit code 2 (click's convention for usage errors), never with a
traceback.
"""
from __future__ import annotations

import sys

import click

from runtime.errors import UserError


class SingaGroup(click.Group):
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


def _add_commands() -> None:
    from singa_cli import data, submit, validate

    cli.add_command(validate.validate)
    cli.add_command(data.data)
    cli.add_command(submit.submit)
    cli.add_command(submit.test)


_add_commands()

if __name__ == "__main__":
    cli()
