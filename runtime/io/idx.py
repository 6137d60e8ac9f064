"""IDX files (the MNIST format) and their import into a kvfile of RecordProto.

An IDX file is a big-endian header, magic `0x0000TTNN` (TT the element type,
NN the number of dimensions), then NN uint32 sizes, then the elements in C
order. MNIST and Fashion-MNIST ship images as 0x00000803 (uint8
[n, rows, cols]) and labels as 0x00000801 (uint8 [n]), usually gzipped; a
gzipped file is recognised by its content (the gzip magic 1f 8b), not its name.

`import_idx` writes what SINGA's `examples/mnist/create_data.cc` writes: one
record per image, key `"%08d" % index`, `RecordProto{shape: [rows, cols],
label, pixel: rows*cols raw bytes}`. Every check runs before the output is
written, and the output is written to a temporary file that replaces `out`
only on success, so a failed import never leaves a partial file.

With `v01=True` it writes what SINGA v0.1's `examples/mnist/create_shard.cc`
writes and its kShardData layer reads: a DataShard, i.e. a directory `out`
holding `shard.dat` (a kvfile), each value a `Record{type:
kSingleLabelImage, image: <the RecordProto above>}` (v0.1's
SingleLabelImageRecord), keys `"%08d"`.
"""
from __future__ import annotations

import contextlib
import gzip
import math
import os
import struct
import zlib

import numpy as np

from conf import common_pb2
from runtime.errors import UserError
from runtime.io.kvfile import SHARD_FILE, KVFileStore, resolve_path
from runtime.io.store import atomic_output

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

# IDX element type code -> numpy dtype (multi-byte types are big-endian)
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_INTEGER_TYPES = (0x08, 0x09, 0x0B, 0x0C)
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: str | os.PathLike) -> bytes:
    """The file's content, gunzipped if it starts with the gzip magic."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise UserError(f"IDX file {os.fspath(path)!r} does not exist") from None
    except OSError as e:
        raise UserError(f"cannot read IDX file {os.fspath(path)!r}: {e.strerror or e}") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(f"{os.fspath(path)}: corrupt or truncated gzip data ({e})") from None
    return raw


def _describe(magic: int) -> str:
    if magic >> 16:
        return "not an IDX file"
    type_code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    dtype = IDX_TYPES.get(type_code)
    return f"{dtype.name if dtype is not None else 'unknown type'}, {ndim} dims"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in an IDX file (gzipped or not), with its IDX shape.

    Raises UserError naming the file for a bad magic number, a truncated
    header or data, or bytes left over after the data the header declares.
    """
    return _parse(os.fspath(path), _read_bytes(path))


def _parse(name: str, raw: bytes) -> np.ndarray:
    if len(raw) < 4:
        raise UserError(f"{name}: not an IDX file: {len(raw)} bytes, too short for the "
                        "4-byte magic number")
    magic = int.from_bytes(raw[:4], "big")
    type_code, ndim = raw[2], raw[3]
    if raw[:2] != b"\0\0" or type_code not in IDX_TYPES or ndim == 0:
        raise UserError(f"{name}: bad IDX magic number 0x{magic:08x}; expected 0x0000TTNN "
                        f"with TT an IDX type ({', '.join(f'{t:02x}' for t in IDX_TYPES)}) "
                        "and NN >= 1 dimensions, e.g. 0x00000803 for MNIST images")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{name}: truncated IDX header: {ndim} dimension sizes need "
                        f"{header} bytes, the file has {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = IDX_TYPES[type_code]
    count = math.prod(dims)
    expected = count * dtype.itemsize
    found = len(raw) - header
    shape = "x".join(map(str, dims))
    if found < expected:
        raise UserError(f"{name}: truncated IDX data: the header declares {shape} "
                        f"{dtype.name} = {expected} bytes, found {found}")
    if found > expected:
        raise UserError(f"{name}: {found - expected} unexpected bytes after the IDX data "
                        f"(the header declares {shape} {dtype.name} = {expected} bytes)")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)


def _read_images(path: str | os.PathLike) -> np.ndarray:
    name = os.fspath(path)
    raw = _read_bytes(path)
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic != IMAGES_MAGIC:
        found = f"0x{magic:08x} ({_describe(magic)})" if magic is not None else \
            f"a {len(raw)}-byte file"
        raise UserError(f"{name}: bad magic number for an IDX images file: expected "
                        f"0x{IMAGES_MAGIC:08x} (uint8, 3 dims: n, rows, cols), found {found}")
    return _parse(name, raw)


def _read_labels(path: str | os.PathLike) -> np.ndarray:
    name = os.fspath(path)
    raw = _read_bytes(path)
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    ok = magic is not None and magic >> 16 == 0 and (magic >> 8) & 0xFF in _INTEGER_TYPES \
        and magic & 0xFF == 1
    if not ok:
        found = f"0x{magic:08x} ({_describe(magic)})" if magic is not None else \
            f"a {len(raw)}-byte file"
        raise UserError(f"{name}: bad magic number for an IDX labels file: expected "
                        f"0x{LABELS_MAGIC:08x} (uint8, 1 dim) or another integer type "
                        f"with 1 dim, found {found}")
    return _parse(name, raw)


def import_idx(images: str | os.PathLike, labels: str | os.PathLike,
               out: str | os.PathLike, key_format: str = "%08d", v01: bool = False) -> int:
    """Write the images and labels as a kvfile of RecordProto at `out`; return the count.

    `out` may be a directory, then the records go to `out/shard.dat`. With
    `v01`, `out` is a v0.1 DataShard directory (created if missing; a file
    there is an error) and each record is wrapped in a `Record`. On any
    error (bad magic, truncated data, count mismatch, label outside 0..255)
    a UserError says what and where, and `out` is left as it was.
    """
    if v01 and os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"v0.1 shard {os.fspath(out)!r} is a file; expected a directory "
                        f"(made if missing) to hold {SHARD_FILE}, e.g. mnist_train_shard")
    try:
        key_format % 0
    except (TypeError, ValueError) as e:
        raise UserError(f"key format {key_format!r} cannot format a record index: {e}; "
                        "expected e.g. '%08d'") from None
    imgs = _read_images(images)
    labs = _read_labels(labels)
    n, rows, cols = imgs.shape
    if labs.shape[0] != n:
        raise UserError(f"image/label count mismatch: {os.fspath(images)} holds {n} images "
                        f"but {os.fspath(labels)} holds {labs.shape[0]} labels; expected "
                        "the same count")
    bad = np.flatnonzero((labs < 0) | (labs > 255))
    if bad.size:
        i = int(bad[0])
        raise UserError(f"{os.fspath(labels)}: label {int(labs[i])} at index {i} is out of "
                        f"range; expected 0..255 ({bad.size} labels out of range)")
    flat = imgs.reshape(n, rows * cols)
    label_list = labs.astype(np.int64).tolist()
    shape = [rows, cols]
    record = common_pb2.RecordProto
    target = os.path.join(out, SHARD_FILE) if v01 else resolve_path(out)
    made_dir = v01 and not os.path.isdir(out)
    try:
        with atomic_output(target) as tmp:
            with KVFileStore(tmp, "w") as store:
                for i in range(n):
                    rec = record(shape=shape, label=label_list[i], pixel=flat[i].tobytes())
                    if v01:
                        rec = common_pb2.Record(type=common_pb2.Record.kSingleLabelImage,
                                                image=rec)
                    store.write((key_format % i).encode("ascii"), rec.SerializeToString())
    except BaseException:
        if made_dir:  # a failed import leaves no empty shard directory behind
            with contextlib.suppress(OSError):
                os.rmdir(out)
        raise
    return n
