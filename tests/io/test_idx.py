"""IDX reading and import into RecordProto kvfiles, the mean record, and
the real Fashion-MNIST import."""
from __future__ import annotations

import gzip
import os
import re
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conf import common_pb2
from runtime.errors import UserError
from runtime.io import open_store
from runtime.io.idx import import_idx, read_idx
from runtime.io.mean import compute_mean

FASHION = Path("/usr/share/datasets/fashion-mnist")

_TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
               np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_bytes(arr: np.ndarray) -> bytes:
    """An IDX file's content for `arr` (big-endian for multi-byte types)."""
    arr = np.asarray(arr)
    if arr.dtype.itemsize > 1:
        arr = arr.astype(arr.dtype.newbyteorder(">"))
    header = struct.pack(">HBB", 0, _TYPE_CODES[arr.dtype], arr.ndim)
    header += struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_pair(dirpath: Path, n: int = 7, rows: int = 5, cols: int = 4, gz: bool = False,
              seed: int = 0, prefix: str = "") -> tuple[Path, Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, rows, cols), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    ipath = write_idx(dirpath / f"{prefix}images-idx3-ubyte{suffix}", images, gz)
    lpath = write_idx(dirpath / f"{prefix}labels-idx1-ubyte{suffix}", labels, gz)
    return ipath, lpath, images, labels


def records(path) -> list[tuple[bytes, common_pb2.RecordProto]]:
    out = []
    with open_store(path) as store:
        for key, value in store:
            rec = common_pb2.RecordProto()
            rec.ParseFromString(value)
            out.append((key, rec))
    return out


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_import_round_trip(tmp_path, gz):
    ipath, lpath, images, labels = make_pair(tmp_path, gz=gz)
    out = tmp_path / "out.bin"
    assert import_idx(ipath, lpath, out) == 7
    recs = records(out)
    assert [k for k, _ in recs] == [b"%08d" % i for i in range(7)]
    for i, (_, rec) in enumerate(recs):
        assert list(rec.shape) == [5, 4]
        assert rec.label == labels[i]
        assert rec.pixel == images[i].tobytes()
        assert len(rec.data) == 0


def test_v01_import_writes_a_record_wrapped_shard_directory(tmp_path):
    """--v01 writes SINGA v0.1's DataShard: `out/shard.dat`, a kvfile (8-byte
    little-endian lengths) whose values are Record{kSingleLabelImage,
    image: RecordProto}, keys %08d, as v0.1's create_shard.cc does."""
    ipath, lpath, images, labels = make_pair(tmp_path)
    out = tmp_path / "mnist_train_shard"
    assert import_idx(ipath, lpath, out, v01=True) == 7
    assert sorted(os.listdir(out)) == ["shard.dat"]
    raw = (out / "shard.dat").read_bytes()
    klen = int.from_bytes(raw[:8], "little")
    assert raw[8:8 + klen] == b"00000000"
    vlen = int.from_bytes(raw[8 + klen:16 + klen], "little")
    first = common_pb2.Record.FromString(raw[16 + klen:16 + klen + vlen])
    assert first.HasField("type") and first.type == common_pb2.Record.kSingleLabelImage
    with open_store(str(out)) as store:
        got = [(k, common_pb2.Record.FromString(v)) for k, v in store]
    assert [k for k, _ in got] == [b"%08d" % i for i in range(7)]
    for i, (_, rec) in enumerate(got):
        assert list(rec.image.shape) == [5, 4]
        assert rec.image.label == labels[i]
        assert rec.image.pixel == images[i].tobytes()


def test_v01_import_refuses_a_file_and_leaves_nothing_on_error(tmp_path):
    ipath, lpath, _, _ = make_pair(tmp_path)
    afile = tmp_path / "shard"
    afile.write_bytes(b"keep")
    with pytest.raises(UserError, match="v0.1 shard .* is a file; expected a directory"):
        import_idx(ipath, lpath, afile, v01=True)
    assert afile.read_bytes() == b"keep"
    _, short_labels, _, _ = make_pair(tmp_path, n=3, prefix="short-")
    with pytest.raises(UserError, match="count mismatch"):
        import_idx(ipath, short_labels, tmp_path / "new_shard", v01=True)
    assert not (tmp_path / "new_shard").exists()


def test_gzip_is_detected_by_content_not_name(tmp_path):
    images = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    gz_without_suffix = write_idx(tmp_path / "images", images, gz=True)
    raw_with_suffix = write_idx(tmp_path / "labels.gz", np.array([3, 4], np.uint8), gz=False)
    assert import_idx(gz_without_suffix, raw_with_suffix, tmp_path / "o.bin") == 2
    assert [r.label for _, r in records(tmp_path / "o.bin")] == [3, 4]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, ">i2", ">i4", ">f4", ">f8"])
def test_read_idx_types(tmp_path, dtype):
    arr = (np.arange(12) - 3).reshape(3, 4).astype(dtype)
    if np.dtype(dtype) == np.uint8:
        arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    got = read_idx(write_idx(tmp_path / "a.idx", arr))
    assert got.shape == (3, 4)
    np.testing.assert_array_equal(got, arr)


def test_custom_key_format_and_directory_output(tmp_path):
    ipath, lpath, _, _ = make_pair(tmp_path, n=3)
    shard = tmp_path / "shard"
    shard.mkdir()
    import_idx(ipath, lpath, shard, key_format="img-%05d")
    assert [k for k, _ in records(shard / "shard.dat")] == [b"img-00000", b"img-00001",
                                                             b"img-00002"]
    with pytest.raises(UserError, match="key format '%s %s'"):
        import_idx(ipath, lpath, tmp_path / "o.bin", key_format="%s %s")


def _corrupt(tmp_path: Path, case: str) -> tuple[Path, Path, str]:
    """Inputs for an import that must fail, and a regex its message must match."""
    ipath, lpath, images, labels = make_pair(tmp_path, n=6)
    if case == "bad magic":
        ipath = write_idx(tmp_path / "swapped", labels)  # a labels file given as images
        return ipath, lpath, r"swapped: bad magic number .* expected 0x00000803.* found 0x00000801"
    if case == "labels bad magic":
        lpath = write_idx(tmp_path / "lab", images)
        return ipath, lpath, r"lab: bad magic number .* labels .* found 0x00000803"
    if case == "truncated":
        data = ipath.read_bytes()
        ipath.write_bytes(data[:-5])
        return ipath, lpath, re.escape(f"{ipath}: truncated IDX data: the header declares "
                                       "6x5x4 uint8 = 120 bytes, found 115")
    if case == "truncated header":
        ipath.write_bytes(ipath.read_bytes()[:10])
        return ipath, lpath, "truncated IDX header"
    if case == "truncated gzip":
        gz = gzip.compress(ipath.read_bytes())
        ipath.write_bytes(gz[: len(gz) // 2])
        return ipath, lpath, re.escape(f"{ipath}: corrupt or truncated gzip data")
    if case == "extra bytes":
        ipath.write_bytes(ipath.read_bytes() + b"xx")
        return ipath, lpath, "2 unexpected bytes after the IDX data"
    if case == "count mismatch":
        lpath = write_idx(tmp_path / "five-labels", labels[:5])
        return ipath, lpath, re.escape(f"count mismatch: {ipath} holds 6 images but {lpath} "
                                       "holds 5 labels")
    if case == "label range":
        wide = labels.astype(np.int32)
        wide[4] = 300
        lpath = write_idx(tmp_path / "wide-labels", wide)
        return ipath, lpath, re.escape(f"{lpath}: label 300 at index 4 is out of range; "
                                       "expected 0..255")
    if case == "missing":
        return tmp_path / "absent", lpath, "'.*absent' does not exist"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["bad magic", "labels bad magic", "truncated",
                                  "truncated header", "truncated gzip", "extra bytes",
                                  "count mismatch", "label range", "missing"])
def test_bad_input_is_reported_and_leaves_no_output(tmp_path, case):
    ipath, lpath, pattern = _corrupt(tmp_path, case)
    before = set(os.listdir(tmp_path))
    with pytest.raises(UserError, match=pattern):
        import_idx(ipath, lpath, tmp_path / "out.bin")
    assert set(os.listdir(tmp_path)) == before


def test_failure_keeps_the_previous_output(tmp_path):
    ipath, lpath, _ = _corrupt(tmp_path, "count mismatch")
    out = tmp_path / "out.bin"
    out.write_bytes(b"previous")
    with pytest.raises(UserError):
        import_idx(ipath, lpath, out)
    assert out.read_bytes() == b"previous"


def test_failure_while_writing_leaves_no_temp_file(tmp_path, monkeypatch):
    ipath, lpath, _, _ = make_pair(tmp_path, n=4)
    from runtime.io import kvfile

    calls = []

    def failing_write(self, key, value):
        calls.append(key)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(kvfile.KVFileStore, "write", failing_write)
    before = set(os.listdir(tmp_path))
    with pytest.raises(OSError):
        import_idx(ipath, lpath, tmp_path / "out.bin")
    assert set(os.listdir(tmp_path)) == before


# --- mean record ------------------------------------------------------------

def test_mean_of_pixel_records(tmp_path):
    ipath, lpath, images, _ = make_pair(tmp_path, n=9, rows=3, cols=2, seed=3)
    import_idx(ipath, lpath, tmp_path / "d.bin")
    assert compute_mean(tmp_path / "d.bin", tmp_path / "mean.bin") == 9
    [(key, rec)] = records(tmp_path / "mean.bin")
    assert key == b"mean"
    assert list(rec.shape) == [3, 2]
    assert not rec.HasField("pixel")
    np.testing.assert_allclose(rec.data, images.reshape(9, 6).mean(axis=0), rtol=1e-6)


def test_mean_of_float_records(tmp_path):
    path = tmp_path / "f.bin"
    with open_store(path, mode="w") as store:
        for i, vals in enumerate([[1.0, 2.0, 3.0], [3.0, 4.0, -3.0]]):
            store.write(b"%d" % i, common_pb2.RecordProto(shape=[3], data=vals).SerializeToString())
    compute_mean(path, tmp_path / "m.bin")
    [(_, rec)] = records(tmp_path / "m.bin")
    assert list(rec.shape) == [3]
    assert list(rec.data) == [2.0, 3.0, 0.0]


def test_mean_rejects_mixed_shapes_and_empty_input(tmp_path):
    path = tmp_path / "mixed.bin"
    with open_store(path, mode="w") as store:
        store.write(b"a", common_pb2.RecordProto(shape=[2, 2], pixel=bytes(4)).SerializeToString())
        store.write(b"b", common_pb2.RecordProto(shape=[4], pixel=bytes(4)).SerializeToString())
    with pytest.raises(UserError, match=r"record b'b' has shape \[4\] with 4 values; "
                                        r"expected shape \[2, 2\]"):
        compute_mean(path, tmp_path / "m.bin")
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="no records to average"):
        compute_mean(empty, tmp_path / "m.bin")
    assert not (tmp_path / "m.bin").exists()
    assert sorted(os.listdir(tmp_path)) == ["empty.bin", "mixed.bin"]


# --- the real Fashion-MNIST -------------------------------------------------

def _fashion_files() -> dict[str, tuple[Path, Path]]:
    names = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    return {split: (FASHION / a, FASHION / b) for split, (a, b) in names.items()}


@pytest.fixture(scope="session")
def fashion(tmp_path_factory) -> dict[str, Path]:
    """Fashion-MNIST imported once per session: {"train": path, "test": path}."""
    files = _fashion_files()
    if not all(p.is_file() for pair in files.values() for p in pair):
        pytest.skip(f"{FASHION} is missing: install the Debian package dataset-fashion-mnist "
                    "(bin/setup does) to run the real Fashion-MNIST import")
    out = tmp_path_factory.mktemp("fashion")
    result = {}
    for split, (images, labels) in files.items():
        result[split] = out / f"{split}_data.bin"
        import_idx(images, labels, result[split])
    return result


@pytest.mark.parametrize("split,count", [("train", 60000), ("test", 10000)])
def test_real_fashion_mnist(fashion, split, count):
    labels = []
    first = None
    with open_store(fashion[split]) as store:
        for key, value in store:
            rec = common_pb2.RecordProto()
            rec.ParseFromString(value)
            if first is None:
                first = (key, rec)
            labels.append(rec.label)
    assert len(labels) == count
    assert Counter(labels) == {c: count // 10 for c in range(10)}
    key, rec = first
    assert key == b"00000000"
    assert list(rec.shape) == [28, 28]
    assert len(rec.pixel) == 784
    with gzip.open(_fashion_files()[split][1]) as f:
        assert rec.label == f.read(9)[8]  # the first label, after the 8-byte header
    with gzip.open(_fashion_files()[split][0]) as f:
        assert rec.pixel == f.read(16 + 784)[16:]
