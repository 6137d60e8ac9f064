"""`singa submit` / `singa test` (placeholder until training lands)."""
import click


@click.command()
@click.argument("conf", type=click.Path())
def submit(conf: str) -> None:
    """Run a job."""
    raise click.UsageError("not yet")


@click.command()
@click.argument("conf", type=click.Path())
def test(conf: str) -> None:
    """Test a checkpoint."""
    raise click.UsageError("not yet")
