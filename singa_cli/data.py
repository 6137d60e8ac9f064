"""`singa data` (placeholder until the config module lands)."""
import click


@click.group()
@click.argument("conf", type=click.Path())
def data(conf: str) -> None:
    """Check a job.conf and print what the job is."""
    raise click.UsageError("not yet")
