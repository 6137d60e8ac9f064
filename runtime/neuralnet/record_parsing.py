"""Record parsing shared by the input layers: RecordProtos to a float
batch, and the crop / mirror / scale of image batches."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from conf import common_pb2
from runtime.errors import LayerError, UserError


def decode_records(recs: Sequence[common_pb2.RecordProto], size: int,
                   where: Callable[[int], str]) -> np.ndarray:
    """[n, size] float32 from RecordProtos: `data` when present, else the
    `pixel` bytes as uint8. `where(k)` names record k in error messages."""
    n = len(recs)
    ndata = np.fromiter((len(r.data) for r in recs), dtype=np.int64, count=n)
    use_data = ndata > 0
    found = np.where(use_data, ndata,
                     np.fromiter((len(r.pixel) for r in recs), dtype=np.int64, count=n))
    if (found != size).any():
        k = int(np.argmax(found != size))
        kind = "data floats" if use_data[k] else "pixel bytes"
        raise UserError(f"{where(k)} has {found[k]} {kind}, expected {size}")
    out = np.empty((n, size), dtype=np.float32)
    if use_data.all():
        out[...] = np.array([r.data for r in recs], dtype=np.float32)
    elif not use_data.any():
        out[...] = np.frombuffer(b"".join(r.pixel for r in recs), dtype=np.uint8).reshape(n, size)
    else:
        for k, r in enumerate(recs):  # a mixed file: rare, not worth vectorising
            out[k] = r.data if use_data[k] else np.frombuffer(r.pixel, dtype=np.uint8)
    return out


def crop_mirror_scale(x: np.ndarray, cropsize: int, mirror: bool, scale: float,
                      train: bool, rng: np.random.Generator) -> np.ndarray:
    """Crop [B,C,H,W] images to cropsize x cropsize (a random offset per image
    in training, the top-left corner otherwise), flip each horizontally with
    probability 1/2 if `mirror` (training only), then multiply by `scale`."""
    b, c, h, w = x.shape
    ch, cw = (cropsize, cropsize) if cropsize else (h, w)
    random_crop = train and cropsize and (h > ch or w > cw)
    flip = rng.random(int(b)) < 0.5 if (mirror and train) else None  # int(b): typed as an array size
    if not random_crop and flip is None:
        out = x[:, :, :ch, :cw]
    else:
        h0 = rng.integers(0, h - ch + 1, size=b) if random_crop else np.zeros(b, np.int64)
        w0 = rng.integers(0, w - cw + 1, size=b) if random_crop else np.zeros(b, np.int64)
        rows = h0[:, None] + np.arange(ch)
        cols = w0[:, None] + np.arange(cw)
        if flip is not None:
            cols = np.where(flip[:, None], cols[:, ::-1], cols)
        out = x[np.arange(b)[:, None, None, None], np.arange(c)[None, :, None, None],
                rows[:, None, :, None], cols[:, None, None, :]]
    if scale != 1:
        out = out * np.float32(scale)
    return np.ascontiguousarray(out, dtype=np.float32)


def cropped_shape(shape: tuple[int, ...], cropsize: int) -> tuple[int, ...]:
    """The [B, C, H, W] shape after cropping to cropsize (0: no crop); a
    cropsize out of range is a LayerError naming rgbimage_conf.cropsize."""
    b, c, h, w = shape
    if cropsize < 0 or cropsize > min(h, w):
        raise LayerError(f"rgbimage_conf.cropsize is {cropsize}, but the images are "
                         f"{h}x{w}; expected 0 (no crop) to {min(h, w)}")
    return (b, c, cropsize, cropsize) if cropsize else shape

