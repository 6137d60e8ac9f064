"""Convolution layers (kConvolution, kCConvolution, kCudnnConv) and the
im2col / col2im helpers they are built on.

Layout: inside im2col the image is held as [C, H, W, N] (batch innermost), so
that every kernel offset copies runs of OW*N contiguous floats instead of
runs of OW, and `col` is [C*kh*kw, OH*OW*N] with rows ordered (c, i, j) as
the weight's columns and columns ordered (oh, ow, n). The whole batch then
goes through ONE matmul `W @ col`; the NCHW <-> CHWN moves are blocked 2-D
transposes (a plain numpy transpose of these shapes thrashes the cache and
costs more than the matmul).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from conf import job_pb2
from runtime.errors import LayerError
from runtime.neuralnet.layer import Layer, kOneToAll, layer_registry
from runtime.neuralnet.neuron_layer import (
    F32, NeuronLayer, Scratch, as_f32, check_param_count, partitioned, positive_field,
    set_param_grad, type_name, wants_grad)

# Bytes of one transpose block: it should stay in L1.
_BLOCK_FLOATS = 8192


def transpose_into(dst: np.ndarray, src: np.ndarray) -> None:
    """dst[B, A] = src[A, B].T, copied in cache-sized blocks."""
    a, b = src.shape
    if a >= b:
        step = max(16, _BLOCK_FLOATS // max(b, 1))
        for s in range(0, a, step):
            dst[:, s:s + step] = src[s:s + step].T
    else:
        step = max(16, _BLOCK_FLOATS // max(a, 1))
        for s in range(0, b, step):
            dst[s:s + step] = src[:, s:s + step].T


# ------------------------------------------------------------- geometry --
def window_geometry(layer: Layer, conf, conf_name: str) -> tuple[int, int, int, int, int, int]:
    """(kh, kw, ph, pw, sh, sw) from a ConvolutionProto or PoolingProto.

    `kernel_x`/`kernel_y` (and the pad/stride variants) win when set
    explicitly; otherwise `kernel` (`pad`, `stride`) applies to both axes.
    x is the width axis, y the height axis.
    """
    def pick(base: str) -> tuple[int, int]:
        both = getattr(conf, base)
        y = getattr(conf, base + "_y") if conf.HasField(base + "_y") else both
        x = getattr(conf, base + "_x") if conf.HasField(base + "_x") else both
        return int(y), int(x)

    kh, kw = pick("kernel")
    ph, pw = pick("pad")
    sh, sw = pick("stride")
    for name, v, low in (("kernel_y", kh, 1), ("kernel_x", kw, 1), ("pad_y", ph, 0),
                         ("pad_x", pw, 0), ("stride_y", sh, 1), ("stride_x", sw, 1)):
        if v < low:
            raise LayerError(f"{type_name(layer)}: {conf_name}.{name} (or its shared field) "
                             f"must be >= {low}, got {v}")
    return kh, kw, ph, pw, sh, sw


def spatial_input(layer: Layer, shape: Sequence[int]) -> tuple[int, int, int, int]:
    """(N, C, H, W) of a source shape: 4-D NCHW, or 3-D (N, H, W) with one channel (as SINGA)."""
    shape = tuple(shape)
    if len(shape) == 4:
        return shape  # type: ignore[return-value]
    if len(shape) == 3:
        return shape[0], 1, shape[1], shape[2]
    raise LayerError(f"a {type_name(layer)} layer needs a 3-D (batch, height, width) or 4-D "
                     f"(batch, channels, height, width) source, got shape {shape}")


def conv_output_size(layer: Layer, h: int, w: int, kh: int, kw: int, ph: int, pw: int,
                     sh: int, sw: int) -> tuple[int, int]:
    """floor((H + 2p - k) / s) + 1 per axis; the kernel must fit the padded input."""
    for axis, size, k, p in (("y", h, kh, ph), ("x", w, kw, pw)):
        if k > size + 2 * p:
            what = "height" if axis == "y" else "width"
            raise LayerError(
                f"{type_name(layer)}: kernel_{axis} {k} is larger than the padded input "
                f"{what} {size + 2 * p} ({what} {size} + 2*pad_{axis} {p})")
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if oh <= 0 or ow <= 0:
        raise LayerError(f"{type_name(layer)}: output size {oh}x{ow} is not positive "
                         f"(input {h}x{w}, kernel {kh}x{kw}, pad {ph}x{pw}, stride {sh}x{sw})")
    return oh, ow


# --------------------------------------------------------- im2col/col2im --
def _windows(a: np.ndarray, i: int, j: int, oh: int, ow: int, sh: int, sw: int) -> np.ndarray:
    """The [C, OH, OW, N] view of a [C, Hp, Wp, N] array seen by kernel offset (i, j)."""
    return a[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]


def im2col(x: np.ndarray, kernel: tuple[int, int], pad: tuple[int, int],
           stride: tuple[int, int], scratch: Scratch | None = None) -> np.ndarray:
    """x [N, C, H, W] -> col [C*kh*kw, OH*OW*N] (float32).

    col[(c, i, j), (oh, ow, n)] = x[n, c, oh*sh + i - ph, ow*sw + j - pw],
    zero where that falls in the padding. The result lives in `scratch`
    (if given) and is overwritten by the next call with the same scratch.
    """
    s = scratch if scratch is not None else Scratch()
    n, c, h, w = x.shape
    (kh, kw), (ph, pw), (sh, sw) = kernel, pad, stride
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    # the padding border is zeroed once, when the array is made
    xc = s.get("im2col.x", (c, h + 2 * ph, w + 2 * pw, n), fill=0)
    x2 = as_f32(x).reshape(n, c * h * w)
    if ph or pw:
        t = s.get("im2col.t", (c, h, w, n))
        transpose_into(t.reshape(c * h * w, n), x2)
        xc[:, ph:ph + h, pw:pw + w] = t
    else:
        transpose_into(xc.reshape(c * h * w, n), x2)
    col = s.get("im2col.col", (c, kh, kw, oh, ow, n))
    for i in range(kh):
        for j in range(kw):
            col[:, i, j] = _windows(xc, i, j, oh, ow, sh, sw)
    return col.reshape(c * kh * kw, oh * ow * n)


def col2im(col: np.ndarray, x_shape: Sequence[int], kernel: tuple[int, int],
           pad: tuple[int, int], stride: tuple[int, int],
           scratch: Scratch | None = None) -> np.ndarray:
    """The adjoint of `im2col`: col [C*kh*kw, OH*OW*N] -> x-shaped [N, C, H, W].

    Each input position receives the sum of the col entries that read it
    (accumulated over the kh*kw kernel offsets); padding entries are dropped.
    """
    s = scratch if scratch is not None else Scratch()
    n, c, h, w = x_shape
    (kh, kw), (ph, pw), (sh, sw) = kernel, pad, stride
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    g6 = col.reshape(c, kh, kw, oh, ow, n)
    gxc = s.zeros("col2im.x", (c, h + 2 * ph, w + 2 * pw, n))
    for i in range(kh):
        for j in range(kw):
            _windows(gxc, i, j, oh, ow, sh, sw)[...] += g6[:, i, j]
    if ph or pw:
        t = s.get("col2im.t", (c, h, w, n))
        np.copyto(t, gxc[:, ph:ph + h, pw:pw + w])
        gxc = t
    gx = s.get("col2im.out", (n, c, h, w))
    transpose_into(gx.reshape(n, c * h * w), gxc.reshape(c * h * w, n))
    return gx


# ------------------------------------------------------------------ layer --
@layer_registry.register(job_pb2.kConvolution, job_pb2.kCudnnConv)
class ConvolutionLayer(NeuronLayer):
    """2-D convolution (cross-correlation, as Caffe and SINGA) of an NCHW batch.

    Conf `convolution_conf`: num_filters (required, > 0), kernel/pad/stride or
    their _x/_y variants. Params: W `[num_filters, C*kh*kw]` and an optional
    bias `[num_filters]` (1 or 2 params). Output `[N, num_filters, OH, OW]`
    with OH = floor((H + 2*pad_y - kernel_y) / stride_y) + 1 (OW likewise). A
    3-D source (N, H, W) is one channel. With partition_dim 1, num_filters is
    divided by num_partitions. kAggGrad in the flag accumulates param grads.
    """

    num_params = None  # 1 or 2, checked in setup
    src_neuron_connection = kOneToAll

    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, 1)
        conf = self.proto.convolution_conf
        filters = positive_field(self, conf, "convolution_conf", "num_filters")
        self.num_filters = partitioned(self, filters, "convolution_conf.num_filters")
        kh, kw, ph, pw, sh, sw = window_geometry(self, conf, "convolution_conf")
        self.kernel, self.pad, self.stride = (kh, kw), (ph, pw), (sh, sw)
        self.src_shape = tuple(srclayers[0].shape_for(self))
        self.n, self.c, self.h, self.w = spatial_input(self, self.src_shape)
        self.oh, self.ow = conv_output_size(self, self.h, self.w, kh, kw, ph, pw, sh, sw)
        nparams = check_param_count(self, (1, 2), "weight, optional bias")
        self.weight = self.make_param(0, (self.num_filters, self.c * kh * kw))
        self.bias = self.make_param(1, (self.num_filters,)) if nparams == 2 else None
        self.shape = (self.n, self.num_filters, self.oh, self.ow)

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        x = self.src_data(srclayers).reshape(self.n, self.c, self.h, self.w)
        col = im2col(x, self.kernel, self.pad, self.stride, self.buf)
        f, p = self.num_filters, self.oh * self.ow
        out = self.buf.get("out", (f, p * self.n))
        np.matmul(self.weight.data, col, out=out)
        if self.bias is not None:
            out += self.bias.data[:, None]
        y = self.buf.get("y", self.shape)
        transpose_into(y.reshape(self.n, f * p), out.reshape(f * p, self.n))
        self.data = y

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        src = srclayers[0]
        f, p = self.num_filters, self.oh * self.ow
        g = as_f32(self.grad).reshape(self.n, f * p)
        gt = self.buf.get("gt", (f * p, self.n))
        transpose_into(gt, g)
        g2 = gt.reshape(f, p * self.n)
        col = self.buf.get("im2col.col", (self.c, *self.kernel, self.oh, self.ow, self.n))
        col = col.reshape(-1, p * self.n)
        set_param_grad(self.weight, g2 @ col.T, flag)
        if self.bias is not None:
            set_param_grad(self.bias, g2.sum(axis=1), flag)
        if wants_grad(src):
            gcol = self.buf.get("gcol", col.shape)
            np.matmul(self.weight.data.T, g2, out=gcol)
            gx = col2im(gcol, (self.n, self.c, self.h, self.w), self.kernel, self.pad,
                        self.stride, self.buf)
            src.set_grad(self, gx.reshape(self.src_shape))


@layer_registry.register(job_pb2.kCConvolution)
class CConvolutionLayer(ConvolutionLayer):
    """SINGA's Caffe-style convolution; on the CPU here it is the same as kConvolution."""
