"""Convolution layers (kConvolution, kCConvolution, kCudnnConv).

The convolution is lowered to matmuls by `runtime.neuralnet.im2col`: full
im2col (one matmul) for layers with few input channels, row taps (one
matmul per kernel row, on a kh times smaller buffer) for the others; see
that module for the layouts and `lowering_for` for the choice.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from conf import job_pb2
from runtime import blas
from runtime.errors import LayerError
from runtime.neuralnet.conf_check import ConfProblem, conf_missing, positive
from runtime.neuralnet.im2col import RowTaps, col2im, im2col, transpose_into
from runtime.neuralnet.layer import Layer, allocated, kOneToAll, layer_registry
from runtime.neuralnet.neuron_layer import (
    NeuronLayer,
    as_f32,
    check_param_count,
    partitioned,
    positive_field,
    set_param_grad,
    type_name,
    wants_grad,
)

__all__ = ["ConvolutionLayer", "CConvolutionLayer", "col2im", "im2col", "transpose_into",
           "window_geometry", "spatial_input", "conv_output_size", "batch_inner_layout",
           "lowering_for"]


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


# ------------------------------------------------------------- lowering --
def batch_inner_layout(ow: int) -> bool:
    """Whether full im2col should put the batch innermost (see `im2col`).

    Each kernel offset copies runs of OW floats (batch outer) or OW*N (batch
    inner); numpy's per-run cost makes short rows slow, while batch-inner
    needs full 2-D transposes of the input and output. Measured on LeNet and
    cifar10 shapes (OW 8, 16: inner; 24, 32: outer), batch-inner wins below ~20.
    """
    return ow < BATCH_INNER_BELOW


BATCH_INNER_BELOW = 20

#: Row taps need K = C*kw of at least this for BLAS to stay efficient
ROW_TAPS_MIN_K = 32


def lowering_for(c: int, kh: int, kw: int) -> str:
    """"rows" (row taps) or "full" (im2col) for C input channels and a kh x kw kernel."""
    return "rows" if kh > 1 and c * kw >= ROW_TAPS_MIN_K else "full"


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

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        missing = conf_missing(proto, "convolution_conf", "num_filters: N kernel: K")
        if missing:
            return missing
        c = proto.convolution_conf
        out: list[ConfProblem] = []
        if not c.HasField("num_filters"):
            out.append(ConfProblem("convolution_conf", "convolution_conf.num_filters is required"))
        else:
            out += positive(proto, "convolution_conf", "num_filters")
        for f in ("kernel", "stride", "kernel_x", "kernel_y", "stride_x", "stride_y"):
            if c.HasField(f):
                out += positive(proto, "convolution_conf", f)
        for f in ("pad", "pad_x", "pad_y"):
            if c.HasField(f):
                out += positive(proto, "convolution_conf", f, allow_zero=True)
        return out


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
        self.lowering = lowering_for(self.c, kh, kw)
        if self.lowering == "rows":
            self.rows = RowTaps((self.n, self.c, self.h, self.w), self.kernel, self.pad,
                                self.stride, self.buf)
            self.batch_inner = True
        else:
            self.batch_inner = batch_inner_layout(self.ow)
        self.col: np.ndarray | None = None  # the lowered input of the last forward

    # The bias rides in the matmuls: the lowered input has one more row, of
    # ones, and the weights one more column, the bias (zero without one); so
    # the forward adds it and the weight gradient's product sums its gradient.

    def _row_weights(self) -> np.ndarray:
        """[W_i | bias] per kernel row i, [kh, F, C*kw + 1] (the bias column only used by row 0)."""
        f, c, (kh, kw) = self.num_filters, self.c, self.kernel
        wr = self.buf.get("wr", (kh, f, c * kw + 1))
        np.copyto(wr[:, :, :-1].reshape(kh, f, c, kw),
                  allocated(self.weight.data).reshape(f, c, kh, kw).transpose(2, 0, 1, 3))
        wr[0, :, -1] = 0 if self.bias is None else self.bias.data
        return wr

    def _full_weights(self) -> np.ndarray:
        """[W | bias], [F, C*kh*kw + 1]."""
        k = self.weight.shape[1]
        we = self.buf.get("we", (self.num_filters, k + 1))
        we[:, :k] = self.weight.data
        we[:, k] = 0 if self.bias is None else self.bias.data
        return we

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        x = self.src_data(srclayers).reshape(self.n, self.c, self.h, self.w)
        n, f, p = self.n, self.num_filters, self.oh * self.ow
        out = self.buf.get("out", (f, n * p))
        if self.lowering == "rows":
            self.col = self.rows.lower(x)
            wr = self._row_weights()
            blas.sgemm(wr[0], self.rows.window(self.col, 0, bias=True), out)
            for i in range(1, self.kernel[0]):
                blas.sgemm(wr[i, :, :-1], self.rows.window(self.col, i), out, beta=1.0)
        else:
            k = self.weight.shape[1]
            self.col = self.buf.get("col", (k + 1, n * p))
            self.col[k] = 1  # cheap: one row
            im2col(x, self.kernel, self.pad, self.stride, self.buf, self.batch_inner,
                   out=self.col[:k])
            np.matmul(self._full_weights(), self.col, out=out)
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
        if self.lowering == "rows":
            self._row_gradient(src, gt, flag)
            return
        # [gW | gbias] = gt @ col.T, computed transposed: OpenBLAS is ~25%
        # faster at this orientation of these long-and-thin products
        k = self.weight.shape[1]
        gwt = self.buf.get("gwt", (k + 1, f))
        np.matmul(allocated(self.col), gt.T, out=gwt)
        set_param_grad(self.weight, gwt[:k].T, flag)
        if self.bias is not None:
            set_param_grad(self.bias, gwt[k], flag)
        if wants_grad(src):
            gcol = self.buf.get("gcol", (k, n * p))
            np.matmul(allocated(self.weight.data).T, gt, out=gcol)
            gx = col2im(gcol, (n, self.c, self.h, self.w), self.kernel, self.pad,
                        self.stride, self.buf, self.batch_inner)
            src.set_grad(self, gx.reshape(self.src_shape))

    def _row_gradient(self, src: Layer, gt: np.ndarray, flag: int) -> None:
        f, c, (kh, kw) = self.num_filters, self.c, self.kernel
        rows, k = self.rows, self.c * self.kernel[1]
        # [gW_i | gbias] (transposed, as above) = window_i @ gt.T
        gwt = self.buf.get("gwt", (kh, k + 1, f))
        blas.sgemm(rows.window(allocated(self.col), 0, bias=True), gt, gwt[0], trans_b=True)
        for i in range(1, kh):
            blas.sgemm(rows.window(allocated(self.col), i), gt, gwt[i, :k], trans_b=True)
        set_param_grad(self.weight, gwt[:, :k].reshape(kh, c, kw, f).transpose(3, 1, 0, 2), flag)
        if self.bias is not None:
            set_param_grad(self.bias, gwt[0, k], flag)
        if not wants_grad(src):
            return
        wr = self.buf.get("wr", (kh, f, k + 1))  # this step's weights, from the forward
        gbuf = rows.grad_buffer()
        for i in range(kh):
            # a phase's first window starts at its row 0: written, not added
            first = i < rows.nphase
            blas.sgemm(wr[i, :, :k], gt, rows.window(gbuf, i), beta=0.0 if first else 1.0,
                       trans_a=True)
            if first:
                rows.clear_tail(gbuf, i)
        gx = rows.raise_(gbuf)
        src.set_grad(self, gx.reshape(self.src_shape))


@layer_registry.register(job_pb2.kCConvolution)
class CConvolutionLayer(ConvolutionLayer):
    """SINGA's Caffe-style convolution; on the CPU here it is the same as kConvolution."""
