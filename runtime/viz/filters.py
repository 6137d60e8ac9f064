"""Draw a weight matrix as a grid of tiles, one tile per filter, as a PNG.

    python -m runtime.viz.filters CHECKPOINT --param w1 [--shape 28x28]
        [--count 100] [--cols N] [--zoom 2] -o filters.png

Each row of the param is one filter (SINGA's layouts: an RBM's or an
InnerProduct's W `[hdim, vdim]`, a convolution's W `[num_filters, C*kh*kw]`).
A row of H*W values is drawn as an H x W grayscale tile, a row of 3*H*W
(`--shape 3xHxW`, channels first as the convolution stores them) as an RGB
tile. Each tile is scaled to the full 0..255 range by its own min and max (a
constant tile is mid-gray), so weak and strong filters are equally visible.
Tiles are laid out row-major, `--cols` per row (default: a square grid),
with a 1-pixel black border, and the picture is enlarged `--zoom` times.

Exit codes: 0 written; 2 a user error (unknown param, a shape that does not
fit, an unreadable checkpoint), with the message on stderr.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import numpy as np

from runtime.errors import UserError
from runtime.viz.png import write_png


def parse_shape(text: str) -> tuple[int, ...]:
    """`28x28` -> (28, 28); `3x5x5` -> (3, 5, 5) (RGB, channels first)."""
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) not in (2, 3) or any(d < 1 for d in dims) or (len(dims) == 3 and dims[0] != 3):
        raise UserError(f"--shape {text!r}: expected HxW (grayscale) or 3xHxW (RGB), "
                        "e.g. 28x28")
    return dims


def default_shape(row_size: int) -> tuple[int, int]:
    """A square tile for a row of n*n values."""
    side = math.isqrt(row_size)
    if side * side != row_size:
        raise UserError(f"a filter has {row_size} values, not a square number: give its "
                        "tile shape with --shape HxW")
    return side, side


def tile_grid(weights: np.ndarray, shape: Sequence[int], count: int = 100,
              cols: int | None = None, border: int = 1, zoom: int = 1) -> np.ndarray:
    """The first `count` rows of `weights` as a uint8 picture of tiles.

    `shape` is (H, W) or (3, H, W); every row must hold prod(shape) values.
    Returns [rows*(H+border)+border, cols*(W+border)+border] (x3 for RGB),
    times `zoom` on each side.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim < 2:
        raise UserError(f"a param of shape {list(w.shape)} has no rows of filters")
    w = w.reshape(w.shape[0], -1)
    size = int(np.prod(shape))
    if w.shape[1] != size:
        raise UserError(f"a filter has {w.shape[1]} values, but tile shape "
                        f"{'x'.join(map(str, shape))} needs {size}")
    if count < 1 or zoom < 1 or border < 0 or (cols is not None and cols < 1):
        raise UserError("count, cols and zoom must be >= 1, border >= 0")
    n = min(count, w.shape[0])
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    tiles = w[:n]
    lo = tiles.min(axis=1, keepdims=True)
    span = tiles.max(axis=1, keepdims=True) - lo
    flat = span[:, 0] == 0
    span[flat] = 1.0
    scaled = (tiles - lo) / span * 255.0
    scaled[flat] = 128.0
    pix = np.rint(scaled).astype(np.uint8)
    rgb = len(shape) == 3
    h, wd = shape[-2:]
    pix = pix.reshape(n, 3, h, wd).transpose(0, 2, 3, 1) if rgb else pix.reshape(n, h, wd)
    out_shape = (rows * (h + border) + border, cols * (wd + border) + border) + ((3,) if rgb else ())
    out = np.zeros(out_shape, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = border + r * (h + border), border + c * (wd + border)
        out[y:y + h, x:x + wd] = pix[i]
    if zoom > 1:
        out = np.repeat(np.repeat(out, zoom, axis=0), zoom, axis=1)
    return out


def draw(checkpoint: str, param: str, output: str, shape: Sequence[int] | None = None,
         count: int = 100, cols: int | None = None, zoom: int = 2) -> tuple[int, ...]:
    """Read `param` from a checkpoint file and write its filters to `output`;
    returns the picture's shape."""
    from runtime import checkpoint as ckpt

    params = ckpt.load([checkpoint])
    if param not in params:
        raise UserError(f"{checkpoint} has no param '{param}'; it has: "
                        + ", ".join(sorted(params)))
    w = params[param][1]
    if w.ndim < 2:
        raise UserError(f"param '{param}' has shape {list(w.shape)}: not a matrix of filters")
    row = int(np.prod(w.shape[1:]))
    pic = tile_grid(w, tuple(shape) if shape else default_shape(row), count, cols, zoom=zoom)
    write_png(output, pic)
    return pic.shape


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runtime.viz.filters",
                                 description="Draw a param's filters (its rows) as a PNG grid.")
    ap.add_argument("checkpoint", help="a checkpoint file, e.g. WORKSPACE/checkpoint/step6000-worker0")
    ap.add_argument("--param", required=True, help="the param's name, e.g. w1")
    ap.add_argument("--shape", default=None,
                    help="a tile's shape: HxW, or 3xHxW for RGB (default: square)")
    ap.add_argument("--count", type=int, default=100, help="how many filters (default 100)")
    ap.add_argument("--cols", type=int, default=None, help="tiles per row (default: square grid)")
    ap.add_argument("--zoom", type=int, default=2, help="enlarge the picture N times (default 2)")
    ap.add_argument("-o", "--output", required=True, help="the PNG file to write")
    args = ap.parse_args(argv)
    try:
        shape = parse_shape(args.shape) if args.shape else None
        h, w = draw(args.checkpoint, args.param, args.output, shape, args.count, args.cols,
                    args.zoom)[:2]
    except UserError as e:
        print(f"filters: {e}", file=sys.stderr)
        return 2
    print(f"{args.output}: {w}x{h} pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
