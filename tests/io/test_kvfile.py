"""KVFile store: SINGA's binary record format, directories with shard.dat,
truncated files, append after a partial record, and the backend registry."""
from __future__ import annotations

import os
import re
import struct

import numpy as np
import pytest

from runtime.errors import UserError
from runtime.io import open_store, store_registry
from runtime.io.kvfile import KVFileStore


def random_records(n: int, seed: int = 0) -> list[tuple[bytes, bytes]]:
    rng = np.random.default_rng(seed)
    recs = [(b"", b""), (b"k", b""), (b"", b"v"), (b"\x00\n\xff", b"\r\n\x00")]
    for _ in range(n):
        k = rng.integers(0, 256, rng.integers(0, 40), dtype=np.uint8).tobytes()
        v = rng.integers(0, 256, rng.integers(0, 500), dtype=np.uint8).tobytes()
        recs.append((k, v))
    return recs


def write_all(path, recs, mode="w") -> None:
    with open_store(path, "kvfile", mode) as store:
        for k, v in recs:
            store.write(k, v)


def read_all(path) -> list[tuple[bytes, bytes]]:
    with open_store(path) as store:
        return list(store)


def test_round_trip_random_binary_records(tmp_path):
    recs = random_records(300)
    path = tmp_path / "data.bin"
    write_all(path, recs)
    assert read_all(path) == recs


def test_file_layout_is_singa_kvfile(tmp_path):
    path = tmp_path / "data.bin"
    write_all(path, [(b"ab", b"xyz"), (b"", b"\x01")])
    expected = (struct.pack("<Q", 2) + b"ab" + struct.pack("<Q", 3) + b"xyz"
                + struct.pack("<Q", 0) + struct.pack("<Q", 1) + b"\x01")
    assert path.read_bytes() == expected


def test_read_returns_none_at_end_and_seek_to_first_restarts(tmp_path):
    path = tmp_path / "data.bin"
    write_all(path, [(b"a", b"1"), (b"b", b"2")])
    with open_store(path) as store:
        assert store.read() == (b"a", b"1")
        assert store.read() == (b"b", b"2")
        assert store.read() is None
        assert store.read() is None
        store.seek_to_first()
        assert store.read() == (b"a", b"1")


def test_value_larger_than_the_buffer(tmp_path):
    big = os.urandom(3 << 20)
    path = tmp_path / "big.bin"
    write_all(path, [(b"small", b"x"), (b"big", big), (b"after", b"y")])
    assert read_all(path) == [(b"small", b"x"), (b"big", big), (b"after", b"y")]


def test_write_mode_truncates(tmp_path):
    path = tmp_path / "data.bin"
    write_all(path, random_records(20))
    write_all(path, [(b"only", b"one")])
    assert read_all(path) == [(b"only", b"one")]


def test_directory_with_shard_dat(tmp_path):
    shard = tmp_path / "train_shard"
    shard.mkdir()
    recs = random_records(10, seed=1)
    write_all(shard, recs)  # an existing directory: records go to shard.dat
    assert (shard / "shard.dat").is_file()
    assert read_all(shard) == recs
    assert read_all(shard / "shard.dat") == recs


def test_directory_without_shard_dat(tmp_path):
    with pytest.raises(UserError, match=r"directory without shard\.dat"):
        open_store(tmp_path)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.bin"
    with pytest.raises(UserError, match=re.escape(f"'{path}' does not exist")):
        open_store(path)


@pytest.mark.parametrize("cut", [3, 8, 10, 16, 17, 19])
def test_truncated_last_record_names_file_and_offset(tmp_path, cut):
    path = tmp_path / "data.bin"
    write_all(path, [(b"k0", b"v0"), (b"k1", b"value1"), (b"k2", b"abc")])
    start = (16 + 4) + (16 + 8)  # byte offset of the third record
    full = path.read_bytes()
    assert len(full) == start + 16 + 2 + 3
    path.write_bytes(full[:start + cut])
    with open_store(path) as store:
        assert store.read() == (b"k0", b"v0")
        assert store.read() == (b"k1", b"value1")
        with pytest.raises(UserError) as err:
            store.read()
    msg = str(err.value)
    assert str(path) in msg
    assert f"byte offset {start}" in msg
    assert f"ends at byte {start + cut}" in msg


def test_corrupt_huge_length_is_reported_not_allocated(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(struct.pack("<Q", 1 << 60) + b"junk")
    with open_store(path) as store, pytest.raises(UserError, match="byte offset 0"):
        store.read()


def test_append_drops_a_partial_last_record(tmp_path):
    path = tmp_path / "data.bin"
    write_all(path, [(b"a", b"1"), (b"b", b"2")])
    complete = path.stat().st_size
    # a writer killed in the middle of its third record
    with open(path, "ab") as f:
        f.write(struct.pack("<Q", 5) + b"ke")
    write_all(path, [(b"c", b"3")], mode="a")
    assert read_all(path) == [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]
    assert path.stat().st_size == complete + 16 + 2


def test_append_to_complete_and_missing_files(tmp_path):
    path = tmp_path / "data.bin"
    write_all(path, [(b"x", b"1")], mode="a")  # created
    write_all(path, [(b"y", b"2")], mode="a")
    assert read_all(path) == [(b"x", b"1"), (b"y", b"2")]


def test_flush_makes_records_readable(tmp_path):
    path = tmp_path / "data.bin"
    with open_store(path, mode="w") as store:
        store.write(b"a", b"1")
        store.flush()
        assert read_all(path) == [(b"a", b"1")]


def test_mode_misuse_and_types(tmp_path):
    path = tmp_path / "data.bin"
    with open_store(path, mode="w") as store:
        with pytest.raises(UserError, match="open for writing"):
            store.read()
        with pytest.raises(TypeError, match="bytes"):
            store.write("str key", b"v")
        store.write(bytearray(b"k"), memoryview(b"v"))
    with open_store(path) as store:
        with pytest.raises(UserError, match="open for reading"):
            store.write(b"k", b"v")
    with pytest.raises(UserError, match="mode 'x'"):
        open_store(path, mode="x")


def test_close_is_idempotent(tmp_path):
    store = KVFileStore(tmp_path / "d.bin", "w")
    store.close()
    store.close()


def test_unknown_backend_lists_known_ones(tmp_path):
    with pytest.raises(UserError) as err:
        open_store(tmp_path / "x", backend="lmdb")
    assert "'lmdb'" in str(err.value)
    assert "kvfile, textfile" in str(err.value)
    assert {"kvfile", "textfile"} <= set(store_registry.known())
