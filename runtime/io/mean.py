"""The mean record: the per-pixel mean of a kvfile of RecordProto.

As SINGA's CIFAR-10 `image_mean.bin`: a kvfile holding one record, key
`"mean"`, whose RecordProto has `data` = the mean of every record's values
(float32, position by position) and `shape` = the records' shape. A record's
values are its `pixel` bytes when it has them, else its float `data`; every
record must have the same shape and size. An input layer subtracts it when
`store_conf.mean_file` names it.
"""
from __future__ import annotations

import os

import numpy as np
from google.protobuf.message import DecodeError

from conf import common_pb2
from runtime.errors import UserError
from runtime.io.kvfile import KVFileStore, resolve_path
from runtime.io.store import atomic_output

MEAN_KEY = b"mean"
_BATCH = 4096  # records summed per numpy call


def compute_mean(in_path: str | os.PathLike, out_path: str | os.PathLike) -> int:
    """Write the mean record of `in_path` to `out_path`; return the number of records averaged.

    A record that does not parse, or whose shape or size differs from the
    first record's, is a UserError naming its key; `out_path` is then left as it was.
    """
    name = os.fspath(in_path)
    total: np.ndarray | None = None
    shape: list[int] | None = None
    size = 0
    count = 0
    pixels: list[bytes] = []

    def add_pixels() -> None:
        nonlocal total
        assert total is not None  # made at the first record
        block = np.frombuffer(b"".join(pixels), dtype=np.uint8).reshape(len(pixels), size)
        total += block.sum(axis=0, dtype=np.float64)
        pixels.clear()

    with KVFileStore(in_path, "r") as store:
        for key, value in store:
            rec = common_pb2.RecordProto()
            try:
                rec.ParseFromString(value)
            except DecodeError:
                raise UserError(f"{name}: record {key!r} is not a RecordProto") from None
            n = len(rec.pixel) if rec.HasField("pixel") else len(rec.data)
            if shape is None:
                shape, size = list(rec.shape), n
                if size == 0:
                    raise UserError(f"{name}: record {key!r} has neither pixel nor data values")
                total = np.zeros(size, dtype=np.float64)
            elif list(rec.shape) != shape or n != size:
                raise UserError(
                    f"{name}: record {key!r} has shape {list(rec.shape)} with {n} values; "
                    f"expected shape {shape} with {size} values like the first record")
            if rec.HasField("pixel"):
                pixels.append(rec.pixel)
                if len(pixels) == _BATCH:
                    add_pixels()
            else:
                assert total is not None  # made at the first record
                total += np.asarray(rec.data, dtype=np.float64)
            count += 1
    if count == 0:
        raise UserError(f"{name}: no records to average")
    if pixels:
        add_pixels()
    assert total is not None  # count > 0
    mean = (total / count).astype(np.float32)
    out = common_pb2.RecordProto(shape=shape)
    out.data.extend(mean.tolist())
    with atomic_output(resolve_path(out_path)) as tmp:
        with KVFileStore(tmp, "w") as store:
            store.write(MEAN_KEY, out.SerializeToString())
    return count
