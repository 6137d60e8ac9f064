"""TextFile store: one value per line, key = line number from 0."""
from __future__ import annotations

import re

import pytest

from runtime.errors import UserError
from runtime.io import open_store


def test_round_trip_with_line_number_keys(tmp_path):
    path = tmp_path / "data.csv"
    values = [b"1,2,3", b"", b"a b\tc", b"\xff\x00binary"]
    with open_store(path, "textfile", "w") as store:
        for i, v in enumerate(values):
            store.write(b"ignored-%d" % i, v)
    assert path.read_bytes() == b"1,2,3\n\na b\tc\n\xff\x00binary\n"
    with open_store(path, "textfile") as store:
        assert list(store) == [(b"0", values[0]), (b"1", values[1]),
                               (b"2", values[2]), (b"3", values[3])]
        assert store.read() is None
        store.seek_to_first()
        assert store.read() == (b"0", b"1,2,3")


def test_last_line_without_newline_and_crlf(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"a\r\nb\nc")
    with open_store(path, "textfile") as store:
        assert list(store) == [(b"0", b"a"), (b"1", b"b"), (b"2", b"c")]


def test_append_starts_a_new_line(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"a\nb")
    with open_store(path, "textfile", "a") as store:
        store.write(b"", b"c")
    assert path.read_bytes() == b"a\nb\nc\n"
    with open_store(path, "textfile", "a") as store:
        store.write(b"", b"d")
    assert path.read_bytes() == b"a\nb\nc\nd\n"


def test_value_with_newline_is_refused(tmp_path):
    with open_store(tmp_path / "d.csv", "textfile", "w") as store:
        with pytest.raises(UserError, match="cannot contain a newline"):
            store.write(b"0", b"two\nlines")


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "missing.csv"
    with pytest.raises(UserError, match=re.escape(f"textfile store '{path}' does not exist")):
        open_store(path, "textfile")


def test_directory_is_refused(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        open_store(tmp_path, "textfile")
