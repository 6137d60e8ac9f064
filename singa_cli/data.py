"""`singa data`: import datasets into kvfiles of RecordProto.

    singa data import-idx IMAGES LABELS OUT     any MNIST-format (IDX) pair
    singa data import-idx ... --v01 OUT_DIR     as a SINGA v0.1 shard (OUT_DIR/shard.dat)
    singa data mean IN OUT                      the per-pixel mean record
    singa data fetch [--source DIR] [--dest DIR]
        Fashion-MNIST (or any MNIST-format directory) -> train_data.bin and
        test_data.bin, as SINGA's examples/mnist expects them.

Errors are `UserError`s; the `singa` group prints them and exits 2.
"""
from __future__ import annotations

import os
from pathlib import Path

import click

import runtime
from runtime.errors import UserError
from runtime.io.idx import import_idx
from runtime.io.kvfile import SHARD_FILE
from runtime.io.mean import compute_mean

DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"
DEFAULT_DEST = Path(runtime.__file__).resolve().parents[1] / "examples" / "mnist"
SOURCE_ENV = "SINGA_DATA_SOURCE"
DEBIAN_PACKAGE = "dataset-fashion-mnist"

# output file -> (images, labels), by their base names in the MNIST distribution
SPLITS = {
    "train_data.bin": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test_data.bin": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def find_idx(source: Path, base: str) -> Path | None:
    """The file for `base` in `source`: gzipped, plain, or with MNIST's
    other spelling (`train-images.idx3-ubyte`)."""
    dotted = base.replace("-idx", ".idx", 1)
    for name in (base + ".gz", base, dotted + ".gz", dotted):
        path = source / name
        if path.is_file():
            return path
    return None


def _is_fresh(out: Path, inputs: list[Path]) -> bool:
    if not out.is_file():
        return False
    mtime = out.stat().st_mtime
    return all(mtime > p.stat().st_mtime for p in inputs)


@click.group()
def data() -> None:
    """Import datasets into record files (kvfile of RecordProto)."""


@data.command("import-idx")
@click.argument("images", type=click.Path(dir_okay=False))
@click.argument("labels", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path())
@click.option("--key-format", default="%08d", show_default=True,
              help="printf-style format of the record keys, from the record index")
@click.option("--v01", is_flag=True,
              help="write a SINGA v0.1 shard: OUT is a directory (e.g. mnist_train_shard) "
                   "holding shard.dat, records wrapped in Record, as v0.1's kShardData reads")
def import_idx_cmd(images: str, labels: str, out: str, key_format: str, v01: bool) -> None:
    """Import an MNIST-format pair of IDX files (gzipped or not) into the kvfile OUT."""
    n = import_idx(images, labels, out, key_format=key_format, v01=v01)
    where = os.path.join(out, SHARD_FILE) if v01 else out
    click.echo(f"wrote {n} records to {where}")


@data.command("mean")
@click.argument("in_path", metavar="IN", type=click.Path())
@click.argument("out", type=click.Path())
def mean_cmd(in_path: str, out: str) -> None:
    """Write the per-pixel mean of the records in IN as a one-record kvfile OUT (key "mean")."""
    n = compute_mean(in_path, out)
    click.echo(f"wrote the mean of {n} records to {out}")


@data.command("fetch")
@click.option("--source", type=click.Path(file_okay=False), envvar=SOURCE_ENV,
              default=DEFAULT_SOURCE, show_default=True,
              help=f"directory of MNIST-format IDX files (also ${SOURCE_ENV})")
@click.option("--dest", type=click.Path(file_okay=False), default=str(DEFAULT_DEST),
              show_default=True, help="where to write train_data.bin and test_data.bin")
@click.option("--force", is_flag=True, help="import even when the outputs are up to date")
def fetch(source: str, dest: str, force: bool) -> None:
    """Import Fashion-MNIST (or any MNIST-format directory) for examples/mnist.

    An output that exists and is newer than its inputs is left alone; after
    pointing --source at other files older than the outputs, use --force.
    """
    src = Path(source)
    if not src.is_dir():
        raise UserError(
            f"dataset directory {source} does not exist; install the Debian package "
            f"{DEBIAN_PACKAGE} (it provides {DEFAULT_SOURCE}) or point --source or "
            f"${SOURCE_ENV} at a directory of MNIST-format IDX files")
    found: dict[str, tuple[Path, Path]] = {}
    missing: list[str] = []
    for out_name, bases in SPLITS.items():
        paths = [find_idx(src, b) for b in bases]
        missing += [f"{b}.gz" for b, p in zip(bases, paths) if p is None]
        first, second = paths
        if first is not None and second is not None:
            found[out_name] = (first, second)
    if missing:
        raise UserError(
            f"{source} lacks {', '.join(missing)} (looked for each gzipped or not); point "
            f"--source or ${SOURCE_ENV} at a directory holding the four MNIST-format files")
    out_dir = Path(dest)
    for out_name, (images, labels) in found.items():
        out = out_dir / out_name
        if not force and _is_fresh(out, [images, labels]):
            click.echo(f"{out} is up to date")
            continue
        n = import_idx(images, labels, out)
        click.echo(f"wrote {n} records to {out}")
    # the per-pixel mean of the training set, as SINGA's CIFAR-10 example
    # uses (examples/cifar10/job.conf reads it as mean_file)
    train, mean = out_dir / "train_data.bin", out_dir / "image_mean.bin"
    if force or not _is_fresh(mean, [train]):
        compute_mean(str(train), str(mean))
        click.echo(f"wrote the mean image to {mean}")
    else:
        click.echo(f"{mean} is up to date")
