"""The PNG writer: a decoder written here (chunks, CRCs, zlib, filter 0)
reads back exactly the pixels written; bad input is a UserError."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from runtime.errors import UserError
from runtime.viz.png import SIGNATURE, encode_png, write_png


def decode(data: bytes) -> tuple[dict, np.ndarray]:
    """(IHDR fields, pixels) of a non-interlaced 8-bit gray/RGB PNG."""
    assert data[:8] == SIGNATURE
    pos, chunks = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, payload = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert crc == zlib.crc32(kind + payload) & 0xFFFFFFFF, kind
        chunks.append((kind, payload))
        pos += 12 + n
    kinds = [k for k, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    w, h, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    hdr = dict(width=w, height=h, depth=depth, colour=colour, interlace=interlace)
    channels = {0: 1, 2: 3}[colour]
    raw = zlib.decompress(b"".join(p for k, p in chunks if k == b"IDAT"))
    rows = np.frombuffer(raw, np.uint8).reshape(h, 1 + w * channels)
    assert not rows[:, 0].any()  # filter type 0 on every row
    pix = rows[:, 1:].reshape((h, w) if channels == 1 else (h, w, 3))
    return hdr, pix


def test_grayscale_round_trip(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (7, 5), dtype=np.uint8)
    path = tmp_path / "g.png"
    write_png(str(path), img)
    hdr, pix = decode(path.read_bytes())
    assert hdr == dict(width=5, height=7, depth=8, colour=0, interlace=0)
    np.testing.assert_array_equal(pix, img)
    assert [p.name for p in tmp_path.iterdir()] == ["g.png"]  # no temp file left


def test_rgb_round_trip():
    img = np.random.default_rng(1).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    hdr, pix = decode(encode_png(img))
    assert (hdr["width"], hdr["height"], hdr["colour"]) == (4, 3, 2)
    np.testing.assert_array_equal(pix, img)


def test_non_contiguous_input_is_written_as_seen():
    img = np.arange(48, dtype=np.uint8).reshape(6, 8)[:, ::2]
    np.testing.assert_array_equal(decode(encode_png(img))[1], img)


@pytest.mark.parametrize("img,msg", [
    (np.zeros((2, 2), np.float32), "must be uint8, got float32"),
    (np.zeros((2, 2, 4), np.uint8), r"\[H, W\] \(grayscale\) or \[H, W, 3\] \(RGB\), got shape \[2, 2, 4\]"),
    (np.zeros((0, 3), np.uint8), "at least one pixel"),
])
def test_bad_images_are_user_errors(img, msg):
    with pytest.raises(UserError, match=msg):
        encode_png(img)


def test_unwritable_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot write .*nodir/x.png"):
        write_png(str(tmp_path / "nodir" / "x.png"), np.zeros((1, 1), np.uint8))
