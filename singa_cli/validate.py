"""`singa validate` (placeholder until the config module lands)."""
import click


@click.command()
@click.argument("conf", type=click.Path())
def validate(conf: str) -> None:
    """Check a job.conf and print what the job is."""
    raise click.UsageError("not yet")
