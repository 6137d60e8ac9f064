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
- Separable: a width pass (kw taps, over all row phases at once), then a
  height pass (kh taps). For MAX each pass keeps the first argmax along its axis (int8): the
  height pass picks the first row holding the window's maximum and the width
  pass the first column of that row, which is the first maximum in row-major
  order. The backward runs the adjoint passes in reverse order, adding in the
  same order as a loop over the taps would.
- Blocks: both passes go block by block over the N*C planes, so that a
  block's work arrays (phase planes, width-pass output, masks) stay in cache.
- Direct: disjoint windows that all lie inside the input (no padding, no
  overhang, stride >= kernel, as LeNet's 2x2/2) need no split: the width pass
  reads strided views of the input itself, which numpy walks as single runs.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from conf import job_pb2
from runtime.errors import LayerError
from runtime.neuralnet.conf_check import ConfProblem, positive
from runtime.neuralnet.conv_layer import spatial_input, window_geometry
from runtime.neuralnet.layer import Layer, layer_registry
from runtime.neuralnet.neuron_layer import F32, NeuronLayer, as_f32, type_name, wants_grad

MAX, AVG = job_pb2.PoolingProto.MAX, job_pb2.PoolingProto.AVG

#: floats of one plane-sized work array per block (blocks stay in L2)
POOL_BLOCK_FLOATS = 1 << 15


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

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        c = proto.pooling_conf
        out: list[ConfProblem] = []
        for f in ("kernel", "stride", "kernel_x", "kernel_y", "stride_x", "stride_y"):
            if c.HasField(f):
                out += positive(proto, "pooling_conf", f)
        for f in ("pad_x", "pad_y"):
            if c.HasField(f):
                out += positive(proto, "pooling_conf", f, allow_zero=True)
        return out


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
        if max(kh, kw) > 127:  # argmax indices are int8
            raise LayerError(f"{type_name(self)}: kernel {kh}x{kw} is too large (at most 127)")
        if self.method == AVG:
            self.inv_size = 1.0 / np.outer(avg_pool_sizes(h, oh, kh, ph, sh),
                                           avg_pool_sizes(w, ow, kw, pw, sw))
        self._plan()

    def _plan(self) -> None:
        """The polyphase grid, what each phase plane copies, and the blocks."""
        n, c, h, w = self.dims
        _, _, oh, ow = self.shape
        (kh, kw), (ph, pw), (sh, sw) = self.kernel, self.pad, self.stride
        rows, cols = oh + (kh - 1) // sh, ow + (kw - 1) // sw
        self.grid = (rows, cols)
        self.plane = rows * cols
        self.nphase = (min(sh, kh), min(sw, kw))
        row_spans = [_phase_span(a, h, ph, sh, rows) for a in range(self.nphase[0])]
        col_spans = [_phase_span(b, w, pw, sw, cols) for b in range(self.nphase[1])]
        self.phases = [(a, b, row_spans[a], col_spans[b])
                       for a in range(self.nphase[0]) for b in range(self.nphase[1])]
        # whether the phases hold every input position (else the gradient is zeroed first)
        self.covered = (self.nphase == (sh, sw) and all(s.full for s in row_spans)
                        and all(s.full for s in col_spans))
        # the grid is the output itself: no gutter to drop
        self.exact = self.grid == (oh, ow)
        # Disjoint windows that all lie inside the input (no padding, no
        # overhang): each phase plane is a strided view of the input as it
        # is, so it is read in place instead of copied, and the gradient is
        # written straight into the input-shaped array.
        self.direct = self.exact and all(
            s.lo == 0 and s.hi == size
            for spans, size in ((row_spans, rows), (col_spans, cols)) for s in spans)
        self.taps_w = [(j % sw, j // sw) for j in range(kw)]
        self.taps_h = [(i % sh, (i // sh) * cols) for i in range(kh)]
        # Blocks of whole planes, so that a block's work arrays stay in cache;
        # the shifted taps of a block's last plane read up to `tail` floats
        # past it (gutter outputs only).
        self.block = max(1, min(n * c, POOL_BLOCK_FLOATS // self.plane))
        self.tail = (kw - 1) // sw + (kh - 1) // sh * cols
        self.argtype = np.int8
        self._temps: dict[str, np.ndarray] = {}

    def _blocks(self):
        """(first plane, planes) of each block."""
        nc = self.dims[0] * self.dims[1]
        for p0 in range(0, nc, self.block):
            yield p0, min(self.block, nc - p0)

    def _work(self, name: str, lead: tuple[int, ...] = (), fill: float = 0.0,
              dtype=F32) -> np.ndarray:
        """A block-sized work array (with its tail); `fill` only when it is made."""
        return self.buf.get(name, (*lead, self.block * self.plane + self.tail), dtype=dtype,
                            fill=fill)

    def _temp(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A work array of `shape`, carved from a flat one that only grows."""
        size = int(np.prod(shape))
        a = self._temps.get(name)
        if a is None or a.size < size or a.dtype != dtype:
            a = self._temps[name] = np.empty(size, dtype)
        return a[:size].reshape(shape)

    def _phase_view(self, a: np.ndarray, rows: _Span, cols: _Span) -> np.ndarray:
        """The positions of an input-shaped [planes, H, W] array that a phase plane holds."""
        return a[:, rows.start:rows.stop:self.stride[0], cols.start:cols.stop:self.stride[1]]

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        n, c, h, w = self.dims
        _, _, oh, ow = self.shape
        kw = self.kernel[1]
        rows, cols = self.grid
        size = n * c * self.plane
        x = self.src_data(srclayers).reshape(n * c, h, w)
        y = self.buf.get("y", self.shape)
        y3 = y.reshape(n * c, oh, ow)
        self.data = y
        if self.direct:
            self._direct_forward(x, y3)
            return
        is_max = self.method == MAX
        # padding, gutter and tails are filled once, when the arrays are made
        planes = self._work("planes", self.nphase, fill=-np.inf if is_max else 0.0)
        mw = self._work("mw", self.nphase[:1]) if kw > 1 else None
        yg = y.reshape(-1) if self.exact else self._work("yg")
        if is_max:
            argw = self.buf.get("argw", (self.nphase[0], size), dtype=self.argtype)
            argh = self.buf.get("argh", (size,), dtype=self.argtype)
        for p0, np_ in self._blocks():
            m = np_ * self.plane
            at = slice(p0 * self.plane, p0 * self.plane + m)
            for a, b, rs, cs in self.phases:
                plane = planes[a, b, :m].reshape(np_, rows, cols)
                plane[:, rs.lo:rs.hi, cs.lo:cs.hi] = self._phase_view(x[p0:p0 + np_], rs, cs)
            # width pass, all row phases at once
            rowmax = planes[:, 0] if mw is None else mw  # mw is None iff kw == 1
            if mw is not None:
                srcs = [planes[:, b, off:off + m] for b, off in self.taps_w]
                if is_max:
                    self._max(srcs, mw[:, :m], argw[:, at])
                else:
                    _sum(srcs, mw[:, :m])
            # height pass
            out = yg[at] if self.exact else yg[:m]
            srcs = [rowmax[a, off:off + m] for a, off in self.taps_h]
            if is_max:
                self._max(srcs, out, argh[at])
            else:
                _sum(srcs, out)
            if self.exact:
                if not is_max:
                    out *= np.broadcast_to(self.inv_size, (np_, oh, ow)).reshape(-1)
                continue
            valid = yg[:m].reshape(np_, rows, cols)[:, :oh, :ow]
            if is_max:
                np.copyto(y3[p0:p0 + np_], valid)
            else:
                np.multiply(valid, self.inv_size, out=y3[p0:p0 + np_])

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
        np.greater(srcs[1], first, out=arg.view(np.bool_))  # strict: the first maximum wins ties
        np.maximum(first, srcs[1], out=out)
        if len(srcs) > 2:
            mask = self._temp("mask", out.shape, np.bool_)
            tmp = self._temp("tmp8", out.shape, self.argtype)
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
        kw = self.kernel[1]
        rows, cols = self.grid
        size = n * c * self.plane
        is_max = self.method == MAX
        g3 = as_f32(self.grad).reshape(n * c, oh, ow)
        if self.direct:
            gx = self.buf.get("gx", (n * c, h, w))
            self._direct_backward(g3, gx)
            src.set_grad(self, gx.reshape(self.src_shape))
            return
        gflat = np.ascontiguousarray(g3).reshape(-1)
        # the gradient on the output grid: zero in the gutter and tail
        gg = self._work("gg")
        gmw = self._work("gmw", self.nphase[:1]) if kw > 1 else None
        gplanes = self._work("gplanes", self.nphase)
        gx = self.buf.get("gx", (n * c, h, w))
        if not self.covered:
            gx.fill(0)
        if is_max:
            argw = self.buf.get("argw", (self.nphase[0], size), dtype=self.argtype)
            argh = self.buf.get("argh", (size,), dtype=self.argtype)
        for p0, np_ in self._blocks():
            m = np_ * self.plane
            at = slice(p0 * self.plane, p0 * self.plane + m)
            if self.exact and is_max:
                gb = gflat[at]
            elif self.exact:
                gb = gg[:m]
                np.multiply(g3[p0:p0 + np_], self.inv_size, out=gb.reshape(np_, oh, ow))
            else:
                gb = gg[:m]
                view = gb.reshape(np_, rows, cols)[:, :oh, :ow]
                if is_max:
                    np.copyto(view, g3[p0:p0 + np_])
                else:
                    np.multiply(g3[p0:p0 + np_], self.inv_size, out=view)
            # adjoint of the height pass, then of the width pass (all row phases at once)
            dst = gplanes[:, 0] if gmw is None else gmw  # gmw is None iff kw == 1
            self._spread(gb, argh[at] if is_max else None, list(dst), self.taps_h, m)
            if gmw is not None:
                self._spread(gmw[:, :m], argw[:, at] if is_max else None,
                             [gplanes[:, b] for b in range(self.nphase[1])], self.taps_w, m)
            # back from the phases to the input
            for a, b, rs, cs in self.phases:
                self._phase_view(gx[p0:p0 + np_], rs, cs)[...] = \
                    gplanes[a, b, :m].reshape(np_, rows, cols)[:, rs.lo:rs.hi, cs.lo:cs.hi]
        src.set_grad(self, gx.reshape(self.src_shape))

    def _spread(self, g: np.ndarray, arg: np.ndarray | None, dsts: list[np.ndarray],
                taps: list[tuple[int, int]], m: int) -> None:
        """The adjoint of one pass: tap j = (phase, offset) hands g (MAX: where
        arg == j; the last axis holds the m positions) to dsts[phase] at that
        offset of its last axis. A phase's first tap has offset 0 and writes it
        (zeroing the rest); later taps add."""
        if arg is not None:
            mask = self._temp("bmask", g.shape, np.bool_)
            tmp = self._temp("btmp", g.shape, F32)
        seen: set[int] = set()
        for j, (phase, off) in enumerate(taps):
            dst = dsts[phase]
            view = dst[..., off:off + m]
            if arg is not None:
                np.equal(arg, j, out=mask)
            if phase not in seen:
                seen.add(phase)
                if arg is not None:
                    np.multiply(g, mask, out=view)
                else:
                    np.copyto(view, g)
                dst[..., off + m:].fill(0)
            elif arg is not None:
                np.multiply(g, mask, out=tmp)
                view += tmp
            else:
                view += g

    # --- disjoint windows inside the input: separable passes on strided views
    def _direct_step(self) -> int:
        """Planes per block: a block has one work array (the width pass's
        output, half an input block or less), so blocks can be larger."""
        n, c, h, w = self.dims
        return max(1, 2 * POOL_BLOCK_FLOATS // (h * w))

    def _direct_blocks(self):
        n, c = self.dims[:2]
        step = self._direct_step()
        for p0 in range(0, n * c, step):
            yield slice(p0, min(n * c, p0 + step))

    def _direct_forward(self, x: np.ndarray, y3: np.ndarray) -> None:
        """The width pass reads all rows of x (each tap is then a view numpy
        walks as one strided run), the height pass the strided rows of that."""
        n, c, h, w = self.dims
        _, _, oh, ow = self.shape
        (kh, kw), (sh, sw) = self.kernel, self.stride
        is_max = self.method == MAX
        step = self._direct_step()
        mw = self.buf.get("dmw", (step, h, ow))
        if is_max:
            argw = self.buf.get("dargw", (n * c, h, ow), dtype=self.argtype)
            argh = self.buf.get("dargh", (n * c, oh, ow), dtype=self.argtype)
        for blk in self._direct_blocks():
            xb, mb = x[blk], mw[:blk.stop - blk.start]
            srcs = [xb[:, :, j:j + sw * (ow - 1) + 1:sw] for j in range(kw)]
            if is_max:
                self._max(srcs, mb, argw[blk])
            else:
                _sum(srcs, mb)
            srcs = [mb[:, i:i + sh * (oh - 1) + 1:sh] for i in range(kh)]
            if is_max:
                self._max(srcs, y3[blk], argh[blk])
            else:
                _sum(srcs, y3[blk])
                y3[blk] *= self.inv_size

    def _direct_backward(self, g3: np.ndarray, gx: np.ndarray) -> None:
        n, c, h, w = self.dims
        _, _, oh, ow = self.shape
        (kh, kw), (sh, sw) = self.kernel, self.stride
        is_max = self.method == MAX
        step = self._direct_step()
        gmw = self.buf.get("dgmw", (step, h, ow))
        rows_covered = kh == sh and h == sh * oh
        if not self.covered:
            gx.fill(0)
        if is_max:
            argw = self.buf.get("dargw", (n * c, h, ow), dtype=self.argtype)
            argh = self.buf.get("dargh", (n * c, oh, ow), dtype=self.argtype)
        else:
            gs = self.buf.get("dgs", (step, oh, ow))
        for blk in self._direct_blocks():
            gb, mb = g3[blk], gmw[:blk.stop - blk.start]
            if not is_max:
                gb = np.multiply(gb, self.inv_size, out=gs[:blk.stop - blk.start])
            if not rows_covered:
                mb.fill(0)
            self._write_taps(gb, argh[blk] if is_max else None,
                             [mb[:, i:i + sh * (oh - 1) + 1:sh] for i in range(kh)])
            self._write_taps(mb, argw[blk] if is_max else None,
                             [gx[blk, :, j:j + sw * (ow - 1) + 1:sw] for j in range(kw)])

    def _write_taps(self, g: np.ndarray, arg: np.ndarray | None, dsts: list[np.ndarray]) -> None:
        """dsts[j] = g where arg == j (MAX; AVG: all of g), for disjoint taps."""
        if arg is None:
            for d in dsts:
                np.copyto(d, g)
            return
        arg = arg.reshape(g.shape)
        if len(dsts) == 2:  # arg is 0 or 1: tap 1 gets g * arg, tap 0 the rest
            np.multiply(g, arg.view(np.bool_), out=dsts[1])
            np.subtract(g, dsts[1], out=dsts[0])
            return
        mask = self._temp("bmask", g.shape, np.bool_)
        for j, d in enumerate(dsts):
            np.equal(arg, j, out=mask)
            np.multiply(g, mask, out=d)


def _sum(srcs: list[np.ndarray], out: np.ndarray) -> None:
    """out = the taps added in order."""
    if len(srcs) == 1:
        np.copyto(out, srcs[0])
        return
    np.add(srcs[0], srcs[1], out=out)
    for v in srcs[2:]:
        out += v


class _Span(NamedTuple):
    """Along one axis, the plane positions [lo, hi) of a stride phase that hold
    input, the input positions they hold (start:stop:stride), and whether
    they reach the phase's last input position (`full`)."""
    lo: int
    hi: int
    start: int
    stop: int
    full: bool


def _phase_span(phase: int, size: int, pad: int, stride: int, planes: int) -> _Span:
    """The span of `phase` (0 <= phase < stride) on a plane of `planes` positions."""
    lo = max(0, -((phase - pad) // stride))   # ceil((pad - phase) / stride)
    end = -((phase - pad - size) // stride)     # ceil((size + pad - phase) / stride)
    hi = max(lo, min(planes, end))
    start = phase + stride * lo - pad
    return _Span(lo, hi, start, start + stride * (hi - lo), hi == end or end <= lo)


@layer_registry.register(job_pb2.kCPooling)
class CPoolingLayer(PoolingLayer):
    """SINGA's Caffe-style pooling; the same computation as kPooling here."""
