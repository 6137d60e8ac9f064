"""Lowering a convolution to matmuls: the column buffers, their layouts, and
the adjoints that bring column gradients back to images.

A convolution out[F, positions] = W[F, C*kh*kw] @ col[C*kh*kw, positions],
where col's rows are ordered (c, i, j) like W's columns and its columns are
the output positions of every instance, is computed one of two ways:

- Full im2col (`im2col` / `col2im`): col holds every kernel offset (i, j),
  one strided copy per offset, and the product is one matmul. Its columns
  come in two orders, picked per layer by the output width:
  - batch outer, (n, oh, ow): each copy moves runs of OW floats, and NCHW
    output is a cheap swap of the F and N axes. Good for wide outputs.
  - batch inner, (oh, ow, n): the image is held as [C, H, W, N], so each copy
    moves runs of OW*N floats; the price is 2-D transposes NCHW <-> CHWN of
    input and output, done in cache-sized blocks. Good for narrow outputs.
- Row taps (`RowTaps`): col holds only the kernel columns j, as rows (c, j),
  over every image row: [C*kw, rows, OW, N] (batch inner). Kernel row i then
  reads the same buffer shifted down by i rows, which in that layout is a
  column offset of i*OW*N: a window of the buffer that BLAS reads in place.
  The product is kh matmuls with K = C*kw, accumulated by GEMM's beta. The
  buffer is kh times smaller than im2col's, so the copies that build it (and
  the adds that bring its gradient back) are kh times fewer, while the
  matmuls do the same arithmetic (in smaller, somewhat less efficient
  pieces). Padding is never copied: the buffer's entries that fall in it are
  zeroed once, when the buffer is made. With a row stride sh > 1 the buffer
  is split into sh row phases (rows a, a + sh, ...), so that row i is phase
  i % sh shifted by i // sh. It needs K = C*kw large enough to keep BLAS
  efficient, so the first layer of a net (C = 1) uses full im2col.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runtime.neuralnet.neuron_layer import Scratch, as_f32

# Floats of one transpose block: it should stay in L1.
_BLOCK_FLOATS = 8192


def transpose_into(dst: np.ndarray, src: np.ndarray) -> None:
    """dst[B, A] = src[A, B].T.

    From few rows to few columns (NCHW -> CHWN: A is the batch) numpy's own
    copy is fastest: it writes dst in order and reads A streams of src. The
    other way round it would write A streams, so the copy goes in
    cache-sized blocks (4-8x faster there).
    """
    a, b = src.shape
    if a < b:
        np.copyto(dst, src.T)
        return
    step = max(16, _BLOCK_FLOATS // max(b, 1))
    for s in range(0, a, step):
        dst[:, s:s + step] = src[s:s + step].T


def _windows(a: np.ndarray, axis: int, i: int, j: int, oh: int, ow: int, sh: int,
             sw: int) -> np.ndarray:
    """The view of padded array `a` (height at `axis`, width at `axis + 1`) that
    kernel offset (i, j) reads: OH x OW positions in place of Hp x Wp."""
    idx = [slice(None)] * a.ndim
    idx[axis] = slice(i, i + sh * (oh - 1) + 1, sh)
    idx[axis + 1] = slice(j, j + sw * (ow - 1) + 1, sw)
    return a[tuple(idx)]


def _output_size(h: int, w: int, kernel: tuple[int, int], pad: tuple[int, int],
                 stride: tuple[int, int]) -> tuple[int, int]:
    (kh, kw), (ph, pw), (sh, sw) = kernel, pad, stride
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def batch_inner_image(x: np.ndarray, pad: tuple[int, int], s: Scratch,
                      name: str) -> np.ndarray:
    """x [N, C, H, W] -> the padded image [C, H + 2ph, W + 2pw, N] in `s`
    (its border is zeroed once, when the array is made)."""
    n, c, h, w = x.shape
    ph, pw = pad
    xc = s.get(name, (c, h + 2 * ph, w + 2 * pw, n), fill=0)
    if ph or pw:
        t = s.get(name + ".t", (c, h, w, n))
        transpose_into(t.reshape(c * h * w, n), x.reshape(n, c * h * w))
        xc[:, ph:ph + h, pw:pw + w] = t
    else:
        transpose_into(xc.reshape(c * h * w, n), x.reshape(n, c * h * w))
    return xc


def batch_inner_unpad(gxc: np.ndarray, x_shape: Sequence[int], pad: tuple[int, int],
                      s: Scratch, name: str) -> np.ndarray:
    """The adjoint of `batch_inner_image`: [C, Hp, Wp, N] -> [N, C, H, W] (interior only)."""
    n, c, h, w = x_shape
    ph, pw = pad
    gx = s.get(name, (n, c, h, w))
    if ph or pw:
        t = s.get(name + ".t", (c, h, w, n))
        np.copyto(t, gxc[:, ph:ph + h, pw:pw + w])
        gxc = t
    transpose_into(gx.reshape(n, c * h * w), gxc.reshape(c * h * w, n))
    return gx


# ----------------------------------------------------------- full im2col --
def im2col(x: np.ndarray, kernel: tuple[int, int], pad: tuple[int, int],
           stride: tuple[int, int], scratch: Scratch | None = None,
           batch_inner: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """x [N, C, H, W] -> col [C*kh*kw, N*OH*OW] (float32).

    Rows are ordered (c, i, j), as the weight's columns; columns (n, oh, ow),
    or (oh, ow, n) when `batch_inner`:
    col[(c, i, j), column(n, oh, ow)] = x[n, c, oh*sh + i - ph, ow*sw + j - pw],
    zero where that falls in the padding. The result lives in `out` (a
    C-contiguous array of that shape) or else in `scratch` (if given), and is
    overwritten by the next call with the same scratch.
    """
    s = scratch if scratch is not None else Scratch()
    n, c, h, w = x.shape
    (kh, kw), (ph, pw), (sh, sw) = kernel, pad, stride
    oh, ow = _output_size(h, w, kernel, pad, stride)
    x = as_f32(x)
    if batch_inner:  # [C, Hp, Wp, N]
        xc = batch_inner_image(x, pad, s, "im2col.x")
        shape = (c, kh, kw, oh, ow, n)
        axis = 1
    else:  # [C, N, Hp, Wp]; the border is zeroed once, when the array is made
        xc = s.get("im2col.x", (c, n, h + 2 * ph, w + 2 * pw), fill=0)
        xc[:, :, ph:ph + h, pw:pw + w] = x.transpose(1, 0, 2, 3)
        shape = (c, kh, kw, n, oh, ow)
        axis = 2
    col = s.get("im2col.col", shape) if out is None else out.reshape(shape)
    for i in range(kh):
        for j in range(kw):
            col[:, i, j] = _windows(xc, axis, i, j, oh, ow, sh, sw)
    return col.reshape(c * kh * kw, n * oh * ow)


def col2im(col: np.ndarray, x_shape: Sequence[int], kernel: tuple[int, int],
           pad: tuple[int, int], stride: tuple[int, int],
           scratch: Scratch | None = None, batch_inner: bool = False) -> np.ndarray:
    """The adjoint of `im2col` (same layout): col -> x-shaped [N, C, H, W].

    Each input position receives the sum of the col entries that read it
    (accumulated over the kh*kw kernel offsets); padding entries are dropped.
    """
    s = scratch if scratch is not None else Scratch()
    n, c, h, w = x_shape
    (kh, kw), (ph, pw), (sh, sw) = kernel, pad, stride
    oh, ow = _output_size(h, w, kernel, pad, stride)
    if batch_inner:
        g6 = col.reshape(c, kh, kw, oh, ow, n)
        gxc = s.zeros("col2im.x", (c, h + 2 * ph, w + 2 * pw, n))
        axis = 1
    else:
        g6 = col.reshape(c, kh, kw, n, oh, ow)
        gxc = s.zeros("col2im.x", (c, n, h + 2 * ph, w + 2 * pw))
        axis = 2
    for i in range(kh):
        for j in range(kw):
            _windows(gxc, axis, i, j, oh, ow, sh, sw)[...] += g6[:, i, j]
    if batch_inner:
        return batch_inner_unpad(gxc, x_shape, pad, s, "col2im.out")
    gx = s.get("col2im.out", (n, c, h, w))
    np.copyto(gx.transpose(1, 0, 2, 3), gxc[:, :, ph:ph + h, pw:pw + w])
    return gx


# ------------------------------------------------------------- row taps --
def _clip(size: int, pad: int, stride: int, tap: int, count: int) -> tuple[int, int, int]:
    """Along one axis, the outputs [lo, hi) whose input position o*stride + tap - pad
    lies inside [0, size), and the input position of `lo`."""
    lo = max(0, -((tap - pad) // stride))                      # ceil((pad - tap) / stride)
    hi = min(count, max(lo, -((tap - pad - size) // stride)))  # ceil((size + pad - tap) / stride)
    return lo, hi, lo * stride + tap - pad


class RowTaps:
    """The row-taps lowering of one convolution geometry (see the module doc).

    `lower(x)` fills the buffer [C*kw + 1, phases * rows * OW * N] (batch
    inner columns (oh, ow, n)); its last row is ones, so that a bias can ride
    in the first product (see `window`). `window(buf, i, bias)` is the
    [C*kw (+1), OH*OW*N] view that kernel row i multiplies. `raise_(gbuf)` is
    the adjoint of `lower` (gbuf: [C*kw, ...], the gradient of the buffer
    without the ones row, from `grad_buffer`). Padding is never copied: the
    buffer's entries that fall in it are zeroed once, when it is made.
    """

    def __init__(self, x_shape: Sequence[int], kernel: tuple[int, int], pad: tuple[int, int],
                 stride: tuple[int, int], scratch: Scratch):
        self.x_shape = tuple(x_shape)
        self.kernel, self.pad, self.stride = kernel, pad, stride
        self.s = scratch
        n, c, h, w = self.x_shape
        (kh, kw), (ph, pw), (sh, sw) = kernel, pad, stride
        self.oh, self.ow = _output_size(h, w, kernel, pad, stride)
        self.nphase = min(sh, kh)
        #: rows per phase: enough for the lowest kernel row's window
        self.rows = self.oh + (kh - 1) // sh
        self.unit = self.ow * n          # floats per row of a phase
        self.k = c * kw                  # rows of the buffer (the matmul's K), without the ones
        self.cols = self.oh * self.unit  # columns of one window
        self.shape = (self.k, self.nphase * self.rows * self.unit)
        # per (kernel column j, phase a): (phase rows, out columns, image rows, image columns)
        self.copies = []
        for j in range(kw):
            q0, q1, x0 = _clip(w, pw, sw, j, self.ow)
            for a in range(self.nphase):
                r0, r1, y0 = _clip(h, ph, sh, a, self.rows)
                if r1 > r0 and q1 > q0:
                    self.copies.append((j, a, (r0, r1), (q0, q1),
                                        slice(y0, y0 + sh * (r1 - r0 - 1) + 1, sh),
                                        slice(x0, x0 + sw * (q1 - q0 - 1) + 1, sw)))
        # a copy that covers the whole image exactly once starts the adjoint (no zero fill)
        self.cover = next((i for i, (_, _, _, _, ys, xs) in enumerate(self.copies)
                           if (sh, sw) == (1, 1) and (ys.start, xs.start) == (0, 0)
                           and ys.stop == h and xs.stop == w), None)

    def window(self, buf: np.ndarray, i: int, bias: bool = False) -> np.ndarray:
        """The [C*kw, OH*OW*N] part of `buf` that kernel row i reads; with
        `bias` (row 0 only) one more row, of ones."""
        if bias and i != 0:
            raise ValueError("the ones row lines up with kernel row 0 only")
        sh = self.stride[0]
        start = ((i % sh) * self.rows + i // sh) * self.unit
        return buf[:self.k + 1 if bias else self.k, start:start + self.cols]

    def _pairs(self, img: np.ndarray, buf: np.ndarray):
        """(image view, buffer view) of each copy; img is [C, H, W, N]."""
        n, c = self.x_shape[:2]
        b6 = buf[:self.k].reshape(c, self.k // c, self.nphase, self.rows, self.ow, n)
        for j, a, (r0, r1), (q0, q1), ys, xs in self.copies:
            yield img[:, ys, xs], b6[:, j, a, r0:r1, q0:q1]

    def lower(self, x: np.ndarray) -> np.ndarray:
        """The buffer of x [N, C, H, W]."""
        n, c, h, w = self.x_shape
        buf = self.s.get("rows.col", (self.k + 1, self.shape[1]), fill=0)
        buf[self.k] = 1  # cheap: one row
        img = self.s.get("rows.x", (c, h, w, n))
        transpose_into(img.reshape(c * h * w, n), as_f32(x).reshape(n, c * h * w))
        for src, dst in self._pairs(img, buf):
            np.copyto(dst, src)
        return buf

    def grad_buffer(self) -> np.ndarray:
        """A buffer for the gradient of `lower`'s; the caller fills every window."""
        return self.s.get("rows.gcol", self.shape)

    def clear_tail(self, gbuf: np.ndarray, phase: int) -> None:
        """Zero the rows of `phase` below its first window (which starts at row 0)."""
        g4 = gbuf.reshape(self.k, self.nphase, self.rows, self.unit)
        g4[:, phase, self.oh:] = 0

    def raise_(self, gbuf: np.ndarray) -> np.ndarray:
        """The adjoint of `lower`: gbuf -> the gradient of x, [N, C, H, W]."""
        n, c, h, w = self.x_shape
        img = self.s.get("rows.gx", (c, h, w, n))
        pairs = list(self._pairs(img, gbuf))
        if self.cover is None:
            img.fill(0)
        else:
            dst, src = pairs.pop(self.cover)
            np.copyto(dst, src)
        for dst, src in pairs:
            dst += src
        gx = self.s.get("rows.out", (n, c, h, w))
        transpose_into(gx.reshape(n, c * h * w), img.reshape(c * h * w, n))
        return gx
