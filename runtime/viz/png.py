"""A small PNG writer: uint8 arrays to PNG files, with zlib and struct only.

    write_png("out.png", gray)          # [H, W] uint8: 8-bit grayscale
    write_png("out.png", rgb)           # [H, W, 3] uint8: 8-bit RGB

Contract: the file is a valid PNG (signature, IHDR, one IDAT, IEND, each
chunk with its CRC-32), non-interlaced, filter type 0 on every row, so any
viewer reads it. Other dtypes or shapes raise `UserError` saying what was
given. The file is written to a temporary name and renamed, so a reader
never sees half a picture.
"""
from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from runtime.errors import UserError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IHDR colour types
GRAY, RGB = 0, 2


def chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type + data."""
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def encode_png(image: np.ndarray, level: int = 6) -> bytes:
    """The PNG bytes of a [H, W] (grayscale) or [H, W, 3] (RGB) uint8 array."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise UserError(f"a PNG image must be uint8, got {a.dtype}")
    if a.ndim == 2:
        colour, channels = GRAY, 1
    elif a.ndim == 3 and a.shape[2] == 3:
        colour, channels = RGB, 3
    else:
        raise UserError(f"a PNG image must be [H, W] (grayscale) or [H, W, 3] (RGB), got shape "
                        f"{list(a.shape)}")
    h, w = a.shape[:2]
    if h < 1 or w < 1:
        raise UserError(f"a PNG image needs at least one pixel, got shape {list(a.shape)}")
    rows = np.ascontiguousarray(a).reshape(h, w * channels)
    # each scanline starts with its filter type byte (0: none)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    return (SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, level))
            + chunk(b"IEND", b""))


def write_png(path: str, image: np.ndarray) -> None:
    """Write `image` (see `encode_png`) to `path`, atomically."""
    data = encode_png(image)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise UserError(f"cannot write {path}: {e.strerror}") from None
