"""Pooling layers (kPooling, kCPooling, kCudnnPool): MAX and AVG over
kernel x kernel windows of each channel, with padding, as Caffe does it.

Output size (Caffe): OH = ceil((H + 2*pad - kernel) / stride) + 1, reduced by
one when pad > 0 and the last window would start at or after H + pad. MAX
treats the padding as -inf; AVG divides by the window size clipped to the
padded area (hend = min(hstart + kernel, H + pad)), so padding inside [-pad,
H + pad) counts as zeros and the overhang past it does not count at all.
The backward routes a MAX gradient to the first maximum of each window
(row-major order) and spreads an AVG gradient evenly over the window.

SINGA's kPooling ignores `pad`; here both kPooling and kCPooling honour it.

How it runs (no loop over pixels or batch items):
- Polyphase split: the padded input is cut into its stride phases, plane
  (a, b) holding rows a, a + sh, ... and columns b, b + sw, ... (one strided
  copy per phase), each plane [N*C, R, Q] with R = OH + (kh-1)//sh rows and
  Q = OW + (kw-1)//sw columns. Tap (i, j) of every window is then plane
  (i % sh, j % sw) shifted by i // sh rows and j // sw columns, and on the
  flattened planes a shift is an offset: each tap is one contiguous 1-D
  slice, so every step is one long vectorised operation (strided views with
  rows as short as OW are several times slower). Outputs live on the same
  [N*C, R, Q] grid; its gutter (the last R - OH rows and Q - OW columns of
  each plane) holds values no valid output reads, and is dropped at the end.
- Separable: a width pass (kw taps, per row phase), then a height pass (kh
  taps). For MAX each pass keeps the first argmax along its axis (int8): the
  height pass picks the first row holding the window's maximum and the width
  pass the first column of that row, which is the first maximum in row-major
  order. The backward runs the adjoint passes in reverse order.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from conf import job_pb2
from runtime.errors import LayerError
from runtime.neuralnet.conv_layer import spatial_input, window_geometry
from runtime.neuralnet.layer import Layer, layer_registry
from runtime.neuralnet.neuron_layer import F32, NeuronLayer, as_f32, type_name, wants_grad

MAX, AVG = job_pb2.PoolingProto.MAX, job_pb2.PoolingProto.AVG


def pooled_size(size: int, kernel: int, pad: int, stride: int) -> int:
    """Caffe's pooled output size along one axis."""
    out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def avg_pool_sizes(size: int, out: int, kernel: int, pad: int, stride: int) -> np.ndarray:
    """Per output position, the window length clipped to [-pad, size + pad)."""
    start = np.arange(out) * stride - pad
    end = np.minimum(start + kernel, size + pad)
    return (end - start).astype(F32)


@layer_registry.register(job_pb2.kPooling, job_pb2.kCudnnPool)
class PoolingLayer(NeuronLayer):
    """MAX or AVG pooling of an NCHW (or N,H,W) source; output [N, C, OH, OW].

    Conf `pooling_conf`: pool (MAX|AVG), kernel/pad/stride or their _x/_y
    variants (the _x/_y ones win when set). pad must be smaller than kernel.
    """

    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, 1)
        conf = self.proto.pooling_conf
        self.method = conf.pool
        if self.method not in (MAX, AVG):
            raise LayerError(f"{type_name(self)}: pooling_conf.pool {self.method} "
                             "is not MAX or AVG")
        kh, kw, ph, pw, sh, sw = window_geometry(self, conf, "pooling_conf")
        for axis, k, p in (("y", kh, ph), ("x", kw, pw)):
            if p >= k:
                raise LayerError(f"{type_name(self)}: pad_{axis} {p} must be smaller than "
                                 f"kernel_{axis} {k}")
        self.src_shape = tuple(srclayers[0].shape_for(self))
        n, c, h, w = spatial_input(self, self.src_shape)
        for axis, size, k, p in (("y", h, kh, ph), ("x", w, kw, pw)):
            if k > size + 2 * p:
                what = "height" if axis == "y" else "width"
                raise LayerError(
                    f"{type_name(self)}: kernel_{axis} {k} is larger than the padded input "
                    f"{what} {size + 2 * p} ({what} {size} + 2*pad_{axis} {p})")
        oh, ow = pooled_size(h, kh, ph, sh), pooled_size(w, kw, pw, sw)
        self.dims = (n, c, h, w)
        self.kernel, self.pad, self.stride = (kh, kw), (ph, pw), (sh, sw)
        self.shape = (n, c, oh, ow)
        # The padded frame: big enough for every window and for the input.
        self.frame = (max((oh - 1) * sh + kh, ph + h), max((ow - 1) * sw + kw, pw + w))
        # Without padding or overhang the source itself is the frame.
        self.framed = ph or pw or self.frame != (h, w)
        if max(kh, kw) > 127:  # argmax indices are int8
            raise LayerError(f"{type_name(self)}: kernel {kh}x{kw} is too large (at most 127)")
        if self.method == AVG:
            self.inv_size = 1.0 / np.outer(avg_pool_sizes(h, oh, kh, ph, sh),
                                           avg_pool_sizes(w, ow, kw, pw, sw))
        self._plan()

    def _plan(self) -> None:
        """The polyphase grid, and what each phase plane copies from the input."""
        n, c, h, w = self.dims
        _, _, oh, ow = self.shape
        (kh, kw), (ph, pw), (sh, sw) = self.kernel, self.pad, self.stride
        self.grid = (n * c, oh + (kh - 1) // sh, ow + (kw - 1) // sw)
        nc, rows, cols = self.grid
        self.size = nc * rows * cols
        self.nphase = (min(sh, kh), min(sw, kw))
        row_spans = [_phase_span(a, h, ph, sh, rows) for a in range(self.nphase[0])]
        col_spans = [_phase_span(b, w, pw, sw, cols) for b in range(self.nphase[1])]
        self.phases = [(a, b, row_spans[a], col_spans[b])
                       for a in range(self.nphase[0]) for b in range(self.nphase[1])]
        # whether the phases hold every input position (else the gradient is zeroed first)
        self.covered = (self.nphase == (sh, sw) and all(s[-1] for s in row_spans)
                        and all(s[-1] for s in col_spans))
        # the grid is the output itself: no gutter to drop
        self.exact = self.grid[1:] == (oh, ow)
        # flat positions each pass computes: the last tap's shift must stay in the grid
        self.count_w = self.size - (kw - 1) // sw
        self.count_h = self.count_w - (kh - 1) // sh * cols
        self.argtype = np.int8

    def _taps(self, k: int, s: int, unit: int) -> list[tuple[int, int]]:
        """(phase, flat offset) of each tap along one axis (`unit`: the flat step of one grid row/col)."""
        return [(j % s, (j // s) * unit) for j in range(k)]

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        n, c, h, w = self.dims
        _, _, oh, ow = self.shape
        (kh, kw), (sh, sw) = self.kernel, self.stride
        nc, rows, cols = self.grid
        x = self.src_data(srclayers).reshape(nc, h, w)
        fill = -np.inf if self.method == MAX else 0.0
        # the padding and gutter are filled once, when the array is made
        planes = self.buf.get("planes", (*self.nphase, self.size), fill=fill)
        for a, b, (r0, r1, y0, y1, _), (q0, q1, x0, x1, _) in self.phases:
            planes[a, b].reshape(self.grid)[:, r0:r1, q0:q1] = x[:, y0:y1:sh, x0:x1:sw]
        is_max = self.method == MAX
        # width pass, per row phase
        if kw == 1:
            mw = planes[:, 0]
        else:
            mw = self.buf.get("mw", (self.nphase[0], self.size), fill=0)
            taps = self._taps(kw, sw, 1)
            for a in range(self.nphase[0]):
                srcs = [planes[a, b, off:off + self.count_w] for b, off in taps]
                out = mw[a, :self.count_w]
                if is_max:
                    self._max(srcs, out, self.buf.get("argw", (self.nphase[0], self.size),
                                                      dtype=self.argtype)[a, :self.count_w])
                else:
                    _sum(srcs, out)
        # height pass
        y = self.buf.get("y", self.shape)
        yg = y.reshape(-1) if self.exact else self.buf.get("yg", (self.size,), fill=0)
        srcs = [mw[a, off:off + self.count_h] for a, off in self._taps(kh, sh, cols)]
        out = yg[:self.count_h]
        if is_max:
            self._max(srcs, out, self.buf.get("argh", (self.size,), dtype=self.argtype)[:self.count_h])
        else:
            _sum(srcs, out)
        valid = yg.reshape(self.grid)[:, :oh, :ow]
        if self.method == AVG:
            if self.exact:
                y *= self.inv_size
            else:
                np.multiply(valid, self.inv_size, out=y.reshape(nc, oh, ow))
        elif not self.exact:
            np.copyto(y.reshape(nc, oh, ow), valid)
        self.data = y

    def _max(self, srcs: list[np.ndarray], out: np.ndarray, arg: np.ndarray) -> None:
        """out = max of the taps; arg = index of the first maximum.

        Branch-free: masked copies (copyto where=) are 10x slower on random
        masks. mask_j marks positions where tap j beats all earlier taps, so
        the first maximum is the largest such j.
        """
        first = srcs[0]
        if len(srcs) == 1:
            np.copyto(out, first)
            arg.fill(0)
            return
        m = out.size
        np.greater(srcs[1], first, out=arg.view(np.bool_))  # strict: the first maximum wins ties
        np.maximum(first, srcs[1], out=out)
        if len(srcs) > 2:
            mask = self.buf.get("mask", (self.size,), dtype=np.bool_)[:m]
            tmp = self.buf.get("tmp8", (self.size,), dtype=self.argtype)[:m]
            for j in range(2, len(srcs)):
                np.greater(srcs[j], out, out=mask)
                np.maximum(out, srcs[j], out=out)
                np.multiply(mask.view(self.argtype), self.argtype(j), out=tmp)
                np.maximum(arg, tmp, out=arg)

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        src = srclayers[0]
        if not wants_grad(src):
            return
        n, c, h, w = self.dims
        _, _, oh, ow = self.shape
        (kh, kw), (sh, sw) = self.kernel, self.stride
        nc, rows, cols = self.grid
        g = as_f32(self.grad).reshape(nc, oh, ow)
        # the gradient on the output grid, zero in the gutter
        if self.exact:
            gg = self.buf.get("gg", self.grid)
        else:
            gg = self.buf.get("gg", self.grid, fill=0)[:, :oh, :ow]
        if self.method == AVG:
            np.multiply(g, self.inv_size, out=gg)
        else:
            np.copyto(gg, g)
        gg = self.buf.get("gg", self.grid).reshape(-1)
        is_max = self.method == MAX
        # adjoint of the height pass
        if kw == 1:
            gmw = self.buf.get("gplanes", (*self.nphase, self.size))[:, 0]
        else:
            gmw = self.buf.get("gmw", (self.nphase[0], self.size))
        argh = self.buf.get("argh", (self.size,), dtype=self.argtype) if is_max else None
        self._spread(gg, argh, gmw, self._taps(kh, sh, cols), self.count_h)
        # adjoint of the width pass
        gplanes = self.buf.get("gplanes", (*self.nphase, self.size))
        if kw > 1:
            argw = (self.buf.get("argw", (self.nphase[0], self.size), dtype=self.argtype)
                    if is_max else None)
            taps = self._taps(kw, sw, 1)
            for a in range(self.nphase[0]):
                self._spread(gmw[a], None if argw is None else argw[a], gplanes[a], taps,
                             self.count_w)
        # back from the phases to the input
        gx = self.buf.get("gx", (nc, h, w))
        if not self.covered:
            gx.fill(0)
        for a, b, (r0, r1, y0, y1, _), (q0, q1, x0, x1, _) in self.phases:
            gx[:, y0:y1:sh, x0:x1:sw] = gplanes[a, b].reshape(self.grid)[:, r0:r1, q0:q1]
        src.set_grad(self, gx.reshape(self.src_shape))

    def _spread(self, g: np.ndarray, arg: np.ndarray | None, dst: np.ndarray,
                taps: list[tuple[int, int]], m: int) -> None:
        """The adjoint of one pass: tap j = (phase, offset) hands g[:m] (MAX:
        where arg == j) to dst[phase] at that offset. A phase's first tap has
        offset 0 and writes it (zeroing the rest); later taps add."""
        g = g[:m]
        if arg is not None:
            arg = arg[:m]
            mask = self.buf.get("bmask", (self.size,), dtype=np.bool_)[:m]
            tmp = self.buf.get("btmp", (self.size,))[:m]
        seen: set[int] = set()
        for j, (phase, off) in enumerate(taps):
            view = dst[phase, off:off + m]
            if arg is not None:
                np.equal(arg, j, out=mask)
            if phase not in seen:
                seen.add(phase)
                if arg is not None:
                    np.multiply(g, mask, out=view)
                else:
                    np.copyto(view, g)
                dst[phase, off + m:].fill(0)
            elif arg is not None:
                np.multiply(g, mask, out=tmp)
                view += tmp
            else:
                view += g


def _sum(srcs: list[np.ndarray], out: np.ndarray) -> None:
    """out = the taps added in order."""
    if len(srcs) == 1:
        np.copyto(out, srcs[0])
        return
    np.add(srcs[0], srcs[1], out=out)
    for v in srcs[2:]:
        out += v


def _phase_span(phase: int, size: int, pad: int, stride: int,
                planes: int) -> tuple[int, int, int, int, bool]:
    """Along one axis, the plane positions [p0, p1) of a stride phase that hold
    input (input positions start:stop:stride), and whether they reach the
    phase's last input position."""
    first = max(0, -((phase - pad) // stride))   # ceil((pad - phase) / stride)
    end = -((phase - pad - size) // stride)        # ceil((size + pad - phase) / stride)
    stop = max(first, min(planes, end))
    start = phase + stride * first - pad
    return first, stop, start, start + stride * (stop - first), stop == end or end <= first


@layer_registry.register(job_pb2.kCPooling)
class CPoolingLayer(PoolingLayer):
    """SINGA's Caffe-style pooling; the same computation as kPooling here."""
