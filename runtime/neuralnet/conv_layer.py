"""Convolution layers (kConvolution, kCConvolution, kCudnnConv) and the
im2col / col2im helpers they are built on.

The whole batch goes through ONE matmul: out[F, cols] = W[F, C*kh*kw] @
col[C*kh*kw, cols], where col's rows are ordered (c, i, j) like W's columns
and its columns are the output positions of every instance. im2col fills col
with one strided copy per kernel offset (i, j), col2im accumulates back with
one add per offset. Two column orders, picked per layer by the output width:
- batch outer, (n, oh, ow): each copy moves runs of OW floats, and NCHW
  output is a cheap swap of the F and N axes. Good for wide outputs.
- batch inner, (oh, ow, n): the image is held as [C, H, W, N], so each copy
  moves runs of OW*N floats; the price is 2-D transposes NCHW <-> CHWN of
  input and output, done in cache-sized blocks (a plain numpy transpose of
  these shapes costs more than the matmul). Good for narrow outputs.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from conf import job_pb2
from runtime.errors import LayerError
from runtime.neuralnet.layer import Layer, kOneToAll, layer_registry
from runtime.neuralnet.neuron_layer import (
    NeuronLayer, Scratch, as_f32, check_param_count, partitioned, positive_field,
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
def _windows(a: np.ndarray, axis: int, i: int, j: int, oh: int, ow: int, sh: int,
             sw: int) -> np.ndarray:
    """The view of padded array `a` (height at `axis`, width at `axis + 1`) that
    kernel offset (i, j) reads: OH x OW positions in place of Hp x Wp."""
    idx = [slice(None)] * a.ndim
    idx[axis] = slice(i, i + sh * (oh - 1) + 1, sh)
    idx[axis + 1] = slice(j, j + sw * (ow - 1) + 1, sw)
    return a[tuple(idx)]


def batch_inner_layout(ow: int) -> bool:
    """Whether im2col should put the batch innermost (see `im2col`).

    Each kernel offset copies runs of OW floats (batch outer) or OW*N (batch
    inner); numpy's per-run cost makes short rows slow, while batch-inner
    needs full 2-D transposes of the input and output. Measured on LeNet and
    cifar10 shapes (OW 8, 16: inner; 24, 32: outer), batch-inner wins below ~20.
    """
    return ow < BATCH_INNER_BELOW


BATCH_INNER_BELOW = 20


def im2col(x: np.ndarray, kernel: tuple[int, int], pad: tuple[int, int],
           stride: tuple[int, int], scratch: Scratch | None = None,
           batch_inner: bool = False) -> np.ndarray:
    """x [N, C, H, W] -> col [C*kh*kw, N*OH*OW] (float32).

    Rows are ordered (c, i, j), as the weight's columns; columns (n, oh, ow),
    or (oh, ow, n) when `batch_inner`:
    col[(c, i, j), column(n, oh, ow)] = x[n, c, oh*sh + i - ph, ow*sw + j - pw],
    zero where that falls in the padding. The result lives in `scratch` (if
    given) and is overwritten by the next call with the same scratch.
    """
    s = scratch if scratch is not None else Scratch()
    n, c, h, w = x.shape
    (kh, kw), (ph, pw), (sh, sw) = kernel, pad, stride
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    x = as_f32(x)
    # The padded image; its border is zeroed once, when the array is made.
    if batch_inner:  # [C, Hp, Wp, N]
        xc = s.get("im2col.x", (c, h + 2 * ph, w + 2 * pw, n), fill=0)
        if ph or pw:
            t = s.get("im2col.t", (c, h, w, n))
            transpose_into(t.reshape(c * h * w, n), x.reshape(n, c * h * w))
            xc[:, ph:ph + h, pw:pw + w] = t
        else:
            transpose_into(xc.reshape(c * h * w, n), x.reshape(n, c * h * w))
        col = s.get("im2col.col", (c, kh, kw, oh, ow, n))
        axis = 1
    else:  # [C, N, Hp, Wp]
        xc = s.get("im2col.x", (c, n, h + 2 * ph, w + 2 * pw), fill=0)
        xc[:, :, ph:ph + h, pw:pw + w] = x.transpose(1, 0, 2, 3)
        col = s.get("im2col.col", (c, kh, kw, n, oh, ow))
        axis = 2
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
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    gx = s.get("col2im.out", (n, c, h, w))
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
    if not batch_inner:
        np.copyto(gx.transpose(1, 0, 2, 3), gxc[:, :, ph:ph + h, pw:pw + w])
        return gx
    if ph or pw:
        t = s.get("col2im.t", (c, h, w, n))
        np.copyto(t, gxc[:, ph:ph + h, pw:pw + w])
        gxc = t
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
        self.batch_inner = batch_inner_layout(self.ow)
        self.col: np.ndarray | None = None  # im2col of the last forward input

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        x = self.src_data(srclayers).reshape(self.n, self.c, self.h, self.w)
        self.col = im2col(x, self.kernel, self.pad, self.stride, self.buf, self.batch_inner)
        n, f, p = self.n, self.num_filters, self.oh * self.ow
        out = self.buf.get("out", (f, n * p))
        np.matmul(self.weight.data, self.col, out=out)
        if self.bias is not None:
            out += self.bias.data[:, None]
        y = self.buf.get("y", self.shape)
        if self.batch_inner:  # out is [F, OH, OW, N]
            transpose_into(y.reshape(n, f * p), out.reshape(f * p, n))
        else:  # out is [F, N, OH, OW]
            np.copyto(y.reshape(n, f, p).transpose(1, 0, 2), out.reshape(f, n, p))
        self.data = y

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        src = srclayers[0]
        n, f, p = self.n, self.num_filters, self.oh * self.ow
        g = as_f32(self.grad)
        gt = self.buf.get("gt", (f, n * p))  # the gradient in the layout of `out`
        if self.batch_inner:
            transpose_into(gt.reshape(f * p, n), g.reshape(n, f * p))
        else:
            np.copyto(gt.reshape(f, n, p), g.reshape(n, f, p).transpose(1, 0, 2))
        # gW = gt @ col.T, computed transposed: OpenBLAS is ~25% faster at
        # this orientation of these long-and-thin products
        gwt = self.buf.get("gwt", (self.col.shape[0], f))
        np.matmul(self.col, gt.T, out=gwt)
        set_param_grad(self.weight, gwt.T, flag)
        if self.bias is not None:
            set_param_grad(self.bias, gt.sum(axis=1), flag)
        if wants_grad(src):
            gcol = self.buf.get("gcol", self.col.shape)
            np.matmul(self.weight.data.T, gt, out=gcol)
            gx = col2im(gcol, (n, self.c, self.h, self.w), self.kernel, self.pad,
                        self.stride, self.buf, self.batch_inner)
            src.set_grad(self, gx.reshape(self.src_shape))


@layer_registry.register(job_pb2.kCConvolution)
class CConvolutionLayer(ConvolutionLayer):
    """SINGA's Caffe-style convolution; on the CPU here it is the same as kConvolution."""
