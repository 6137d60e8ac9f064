"""`singa data import-idx | mean | fetch` through the `singa` group (exit codes, messages)."""
from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from runtime.io import open_store
from tests.io.test_idx import make_pair, records

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def run(*args: str, env: dict | None = None):
    """`singa ARGS` through the real group (which maps UserError to exit 2)."""
    from singa_cli.main import cli  # here, so a broken verb fails these tests, not collection

    env = {"SINGA_DATA_SOURCE": None, **(env or {})}
    return CliRunner().invoke(cli, list(args), env=env)


def make_source(dirpath: Path, gz: bool = True, n_train: int = 12, n_test: int = 5) -> Path:
    """A small MNIST-format directory with the four standard file names."""
    dirpath.mkdir()
    for split, n in (("train", n_train), ("t10k", n_test)):
        ipath, lpath, _, _ = make_pair(dirpath, n=n, rows=28, cols=28, gz=False, prefix="x")
        for src, kind in ((ipath, "images-idx3"), (lpath, "labels-idx1")):
            name = f"{split}-{kind}-ubyte"
            data = src.read_bytes()
            if gz:
                (dirpath / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (dirpath / name).write_bytes(data)
            src.unlink()
    return dirpath


def test_import_idx(tmp_path):
    ipath, lpath, images, labels = make_pair(tmp_path, n=7, gz=True)
    out = tmp_path / "out.bin"
    result = run("data", "import-idx", str(ipath), str(lpath), str(out))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote 7 records to {out}"
    assert [r.label for _, r in records(out)] == labels.tolist()


V01_CONF = Path(__file__).resolve().parents[1] / "config" / "valid" / "v01_mnist_shard.conf"


def test_import_idx_v01_feeds_a_singa_v01_mnist_conf(tmp_path, monkeypatch):
    """`import-idx --v01` writes the shards SINGA v0.1's MNIST conf reads
    (kShardData + kMnist + kLabel, paths from the SINGA root): it validates
    and trains on them, and the parsed batches are the imported images."""
    from conf import job_pb2
    from runtime import checkpoint
    from runtime.config import load_job
    from runtime.io.idx import read_idx
    from runtime.neuralnet.net import NeuralNet
    from runtime.train import single

    root = tmp_path / "singa"
    (root / "examples" / "mnist").mkdir(parents=True)
    src = make_source(tmp_path / "idx", gz=True, n_train=12, n_test=5)
    monkeypatch.chdir(root)
    for split, shard in (("train", "mnist_train_shard"), ("t10k", "mnist_test_shard")):
        r = run("data", "import-idx", "--v01", str(src / f"{split}-images-idx3-ubyte.gz"),
                str(src / f"{split}-labels-idx1-ubyte.gz"), f"examples/mnist/{shard}")
        assert r.exit_code == 0, r.output
        assert r.output == f"wrote {12 if split == 'train' else 5} records to " \
                           f"examples/mnist/{shard}/shard.dat\n"
    text = V01_CONF.read_text()
    for old, new in (("train_steps: 1000", "train_steps: 3"), ("test_steps:10", "test_steps:2"),
                     ("test_freq:60", "test_freq:2"), ("disp_freq:10", "disp_freq:1"),
                     ("batchsize: 1000", "batchsize: 4"), ("num_output: 2500", "num_output: 8")):
        assert old in text
        text = text.replace(old, new)
    (root / "examples" / "mnist" / "job.conf").write_text(text)
    r = run("validate", "--strict", "examples/mnist/job.conf")
    assert r.exit_code == 0, r.output
    assert f"sharddata_conf.path: {root}/examples/mnist/mnist_train_shard" in r.output

    lines: list[str] = []
    job = load_job("examples/mnist/job.conf", submit=True).proto
    worker = single.train(job, log=lines.append)
    assert [l.split("  ")[0] for l in lines if l.startswith("Test @")] == \
        ["Test @ step 0", "Test @ step 2", "Test @ step 3"]
    assert len([l for l in lines if l.startswith("Train @")]) == 3
    assert checkpoint.latest(str(root / "examples" / "mnist")) is not None
    # the v0.1 parsers read the imported values: x / 127.5 - 1 and the labels
    net = NeuralNet.create(job.neuralnet, job_pb2.kTest)
    net.set_rng(np.random.default_rng(0))
    for name in ("data", "mnist", "label"):
        net.layer(name).compute_feature(job_pb2.kTest | job_pb2.kForward,
                                        net.srclayers(net.layer(name)))
    images = read_idx(src / "t10k-images-idx3-ubyte.gz")[:4].astype(np.float32)
    labels = read_idx(src / "t10k-labels-idx1-ubyte.gz")[:4]
    np.testing.assert_allclose(net.layer("mnist").data, (images / 127.5 - 1)[:, None],
                               rtol=1e-6)
    np.testing.assert_array_equal(net.layer("label").aux_data, labels)
    net.close()
    assert worker.step == 3


def test_import_idx_error_exits_2_with_message(tmp_path):
    ipath, lpath, _, _ = make_pair(tmp_path, n=7)
    out = tmp_path / "out.bin"
    result = run("data", "import-idx", str(lpath), str(lpath), str(out))
    assert result.exit_code == 2
    assert "bad magic number for an IDX images file" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_import_idx_missing_file(tmp_path):
    result = run("data", "import-idx", str(tmp_path / "a"), str(tmp_path / "b"),
                 str(tmp_path / "o"))
    assert result.exit_code == 2
    assert f"'{tmp_path / 'a'}' does not exist" in result.output


def test_mean(tmp_path):
    ipath, lpath, _, _ = make_pair(tmp_path, n=4)
    run("data", "import-idx", str(ipath), str(lpath), str(tmp_path / "d.bin"))
    result = run("data", "mean", str(tmp_path / "d.bin"), str(tmp_path / "m.bin"))
    assert result.exit_code == 0, result.output
    assert "wrote the mean of 4 records" in result.output
    with open_store(tmp_path / "m.bin") as store:
        assert store.read()[0] == b"mean"
    bad = run("data", "mean", str(tmp_path / "nope.bin"), str(tmp_path / "m2.bin"))
    assert bad.exit_code == 2
    assert "does not exist" in bad.output


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_fetch_imports_and_is_idempotent(tmp_path, gz):
    src = make_source(tmp_path / "src", gz=gz)
    dest = tmp_path / "dest"
    first = run("data", "fetch", "--source", str(src), "--dest", str(dest))
    assert first.exit_code == 0, first.output
    assert f"wrote 12 records to {dest / 'train_data.bin'}" in first.output
    assert f"wrote 5 records to {dest / 'test_data.bin'}" in first.output
    assert len(records(dest / "train_data.bin")) == 12

    again = run("data", "fetch", "--source", str(src), "--dest", str(dest))
    assert again.exit_code == 0
    assert "wrote" not in again.output
    assert again.output.count("is up to date") == 3  # two splits and the mean image

    # a newer input is imported again; the other split is left alone
    labels = next(src.glob("t10k-labels*"))
    later = os.stat(dest / "test_data.bin").st_mtime + 10
    os.utime(labels, (later, later))
    third = run("data", "fetch", "--source", str(src), "--dest", str(dest))
    assert f"wrote 5 records to {dest / 'test_data.bin'}" in third.output
    assert f"{dest / 'train_data.bin'} is up to date" in third.output

    forced = run("data", "fetch", "--source", str(src), "--dest", str(dest), "--force")
    assert forced.output.count("wrote") == 3
    assert f"wrote the mean image to {dest / 'image_mean.bin'}" in forced.output


def test_fetch_accepts_mnist_dotted_names(tmp_path):
    src = make_source(tmp_path / "src", gz=False)
    for name in NAMES:
        (src / name).rename(src / name.replace("-idx", ".idx", 1))
    result = run("data", "fetch", "--source", str(src), "--dest", str(tmp_path / "d"))
    assert result.exit_code == 0, result.output


def test_fetch_honours_singa_data_source(tmp_path):
    src = make_source(tmp_path / "src")
    result = run("data", "fetch", "--dest", str(tmp_path / "d"),
                 env={"SINGA_DATA_SOURCE": str(src)})
    assert result.exit_code == 0, result.output
    assert "wrote 12 records" in result.output


def test_fetch_missing_files_named(tmp_path):
    src = make_source(tmp_path / "src")
    (src / "t10k-labels-idx1-ubyte.gz").unlink()
    dest = tmp_path / "d"
    result = run("data", "fetch", "--source", str(src), "--dest", str(dest))
    assert result.exit_code == 2
    assert f"{src} lacks t10k-labels-idx1-ubyte.gz" in result.output
    assert "SINGA_DATA_SOURCE" in result.output
    assert not (dest / "train_data.bin").exists()


def test_fetch_missing_directory_names_package_and_variable(tmp_path):
    result = run("data", "fetch", "--source", str(tmp_path / "none"), "--dest", str(tmp_path))
    assert result.exit_code == 2
    assert "dataset-fashion-mnist" in result.output
    assert "SINGA_DATA_SOURCE" in result.output


def test_fetch_bad_file_leaves_no_output(tmp_path):
    src = make_source(tmp_path / "src")
    shutil.copy(src / "t10k-labels-idx1-ubyte.gz", src / "train-labels-idx1-ubyte.gz")
    dest = tmp_path / "d"
    result = run("data", "fetch", "--source", str(src), "--dest", str(dest))
    assert result.exit_code == 2
    assert "count mismatch" in result.output
    assert not (dest / "train_data.bin").exists()
    assert not dest.exists() or list(dest.iterdir()) == []


def test_fetch_default_dest_is_examples_mnist():
    import runtime
    from singa_cli import data

    assert data.DEFAULT_DEST == Path(runtime.__file__).resolve().parents[1] / "examples/mnist"
