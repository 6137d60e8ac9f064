"""Filters as a grid of tiles: layout, per-tile scaling, RGB tiles, and the
`python -m runtime.viz.filters` command on a real checkpoint file."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime import checkpoint
from runtime.errors import UserError
from runtime.viz.filters import default_shape, parse_shape, tile_grid
from tests.viz.test_png import decode

ROOT = Path(__file__).resolve().parents[2]


def test_grid_layout_and_per_tile_scaling():
    w = np.zeros((5, 6))
    w[0] = np.arange(6)           # a ramp: 0 .. 255 after scaling
    w[1] = 10 * np.arange(6) - 3  # the same ramp at another scale
    w[2] = 7.0                    # constant: mid-gray
    pic = tile_grid(w, (2, 3), count=4)
    # 4 tiles -> 2x2 grid of 2x3 tiles with a 1-pixel border
    assert pic.shape == (2 * 3 + 1, 2 * 4 + 1) and pic.dtype == np.uint8
    ramp = np.rint(np.arange(6) / 5 * 255).reshape(2, 3)
    np.testing.assert_array_equal(pic[1:3, 1:4], ramp)
    np.testing.assert_array_equal(pic[1:3, 5:8], ramp)
    assert (pic[4:6, 1:4] == 128).all()
    assert (pic[0] == 0).all() and (pic[:, 0] == 0).all() and (pic[3] == 0).all()
    assert tile_grid(w, (2, 3), count=4, cols=4, zoom=3).shape == (3 * 4, 3 * 17)


def test_rgb_tiles_are_channels_first():
    w = np.zeros((1, 3 * 2 * 2))
    w[0, :4] = 1.0  # the red channel
    pic = tile_grid(w, (3, 2, 2), count=1)
    assert pic.shape == (4, 4, 3)
    np.testing.assert_array_equal(pic[1:3, 1:3, 0], 255)
    np.testing.assert_array_equal(pic[1:3, 1:3, 1:], 0)


def test_shapes_and_their_errors():
    assert parse_shape("28x28") == (28, 28) and parse_shape("3x5x5") == (3, 5, 5)
    assert default_shape(784) == (28, 28)
    for bad in ("28", "axb", "2x5x5", "0x3"):
        with pytest.raises(UserError, match="expected HxW"):
            parse_shape(bad)
    with pytest.raises(UserError, match="not a square number: give its tile shape with --shape"):
        default_shape(30)
    with pytest.raises(UserError, match="a filter has 6 values, but tile shape 2x2 needs 4"):
        tile_grid(np.zeros((3, 6)), (2, 2))


def _filters(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.viz.filters", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_command_draws_a_checkpoint_param(tmp_path):
    w = np.random.default_rng(0).standard_normal((12, 16)).astype(np.float32)
    ckpt = checkpoint.save(str(tmp_path), 5, 0, [("w1", 5, w), ("b1", 5, np.zeros(16, np.float32))])
    out = tmp_path / "f.png"
    r = _filters(str(ckpt), "--param", "w1", "--count", "9", "--zoom", "1", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{out}: 16x16 pixels"  # 3x3 tiles of 4x4 (default shape)
    _, pix = decode(out.read_bytes())
    np.testing.assert_array_equal(pix, tile_grid(w, (4, 4), count=9))

    r = _filters(str(ckpt), "--param", "w9", "-o", str(out))
    assert r.returncode == 2 and "has no param 'w9'; it has: b1, w1" in r.stderr
    r = _filters(str(ckpt), "--param", "b1", "-o", str(out))
    assert r.returncode == 2 and "not a matrix of filters" in r.stderr
    r = _filters(str(tmp_path / "nope"), "--param", "w1", "-o", str(out))
    assert r.returncode == 2 and "cannot read checkpoint" in r.stderr
    assert "Traceback" not in r.stderr
