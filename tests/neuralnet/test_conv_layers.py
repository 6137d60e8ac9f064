"""Convolution and pooling: values against naive loop implementations written
here (Caffe's definitions), tiny hand examples with padding, shapes, gradient
checks and the errors bad configs raise. Every lowering of the convolution
and every pooling path (polyphase, direct, one block or many) runs the same
checks."""
import math

import numpy as np
import pytest

from conf import job_pb2
from runtime.errors import LayerError
from runtime.neuralnet import conv_layer, layer_registry, pooling_layer
from runtime.neuralnet.conv_layer import CConvolutionLayer, ConvolutionLayer, col2im, im2col, transpose_into
from runtime.neuralnet.im2col import RowTaps
from runtime.neuralnet.neuron_layer import Scratch
from runtime.neuralnet.pooling_layer import CPoolingLayer, PoolingLayer
from tests.neuralnet.harness import BACK, TRAIN, check_layer, make

rng = np.random.default_rng(11)


def forward(proto_text, x, flag=TRAIN):
    layer, srcs = make(proto_text, [x])
    layer.compute_feature(flag, srcs)
    return layer, srcs


# ------------------------------------------------------------ references --
def naive_conv(x, w, b, kh, kw, ph, pw, sh, sw):
    """Cross-correlation, one output pixel at a time (float64)."""
    n, c, h, wd = x.shape
    f = w.shape[0]
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    wk = w.reshape(f, c, kh, kw).astype(np.float64)
    y = np.zeros((n, f, oh, ow))
    for i in range(n):
        for o in range(f):
            for a in range(oh):
                for col in range(ow):
                    patch = xp[i, :, a * sh:a * sh + kh, col * sw:col * sw + kw]
                    y[i, o, a, col] = np.sum(patch * wk[o]) + (0 if b is None else b[o])
    return y


def naive_pool(x, k, p, s, method):
    """Caffe's pooling with its output-size rule, one window at a time."""
    n, c, h, w = x.shape
    oh, ow = (int(math.ceil((size + 2 * p - k) / s)) + 1 for size in (h, w))
    if p > 0:
        oh -= (oh - 1) * s >= h + p
        ow -= (ow - 1) * s >= w + p
    y = np.zeros((n, c, oh, ow))
    for a in range(oh):
        for b in range(ow):
            hs, ws = a * s - p, b * s - p
            if method == "MAX":
                he, we = min(hs + k, h), min(ws + k, w)
                y[:, :, a, b] = x[:, :, max(hs, 0):he, max(ws, 0):we].max(axis=(2, 3))
            else:
                he, we = min(hs + k, h + p), min(ws + k, w + p)
                size = (he - hs) * (we - ws)
                win = x[:, :, max(hs, 0):min(he, h), max(ws, 0):min(we, w)]
                y[:, :, a, b] = win.sum(axis=(2, 3)) / size
    return y


def distinct(shape, seed=0):
    """Values at least 0.1 apart: no near-ties for MAX under a numeric gradient."""
    r = np.random.default_rng(seed)
    n = int(np.prod(shape))
    return (r.permutation(n).reshape(shape) * 0.1 - n * 0.05).astype(np.float32)


@pytest.fixture(params=["full batch outer", "full batch inner", "row taps"])
def layout(request, monkeypatch):
    """Run a test with each lowering: full im2col in each column order
    (normally picked by output width) and row taps (normally picked by C*kw)."""
    rows = request.param == "row taps"
    monkeypatch.setattr(conv_layer, "ROW_TAPS_MIN_K", 0 if rows else 10**6)
    monkeypatch.setattr(conv_layer, "BATCH_INNER_BELOW",
                        0 if request.param == "full batch outer" else 10**6)
    return request.param


@pytest.fixture(params=["one block", "many blocks"])
def blocks(request, monkeypatch):
    """Run a pooling test with its planes in one block and in blocks of one plane."""
    if request.param == "many blocks":
        monkeypatch.setattr(pooling_layer, "POOL_BLOCK_FLOATS", 1)
    return request.param


CONV = ('type: {t} convolution_conf {{ num_filters: {f} {geo} }} '
        'param {{ name: "w" }} param {{ name: "b" }}')


# ------------------------------------------------------------ convolution --
@pytest.mark.parametrize("geo, k, p, s", [
    ("kernel: 3", (3, 3), (0, 0), (1, 1)),
    ("kernel: 3 pad: 1 stride: 2", (3, 3), (1, 1), (2, 2)),
    ("kernel_x: 3 kernel_y: 2 pad_x: 1 pad_y: 2 stride_x: 2 stride_y: 1", (2, 3), (2, 1), (1, 2)),
    ("kernel: 4 kernel_x: 2 pad: 1 stride: 3 stride_y: 1", (4, 2), (1, 1), (1, 3)),
])
def test_conv_matches_naive_loop(geo, k, p, s, layout):
    x = rng.standard_normal((3, 2, 7, 6)).astype(np.float32)
    layer, _ = forward(CONV.format(t="kConvolution", f=4, geo=geo), x)
    ref = naive_conv(x, layer.weight.data, layer.bias.data, *k, *p, *s)
    assert layer.shape == ref.shape
    assert layer.data.dtype == np.float32
    np.testing.assert_allclose(layer.data, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("geo", ["kernel: 3", "kernel: 2 pad: 1 stride: 2",
                                 "kernel_x: 3 kernel_y: 2 pad_x: 1 stride_y: 2"])
def test_conv_gradient(geo, layout):
    check_layer(CONV.format(t="kCConvolution", f=3, geo=geo), [rng.standard_normal((2, 2, 5, 4))],
                nparams=2)


def test_conv_shape_and_param_shapes():
    layer, _ = make(CONV.format(t="kConvolution", f=20, geo="kernel: 5"),
                    [np.zeros((64, 1, 28, 28))])
    assert layer.shape == (64, 20, 24, 24)
    assert layer.weight.shape == (20, 25) and layer.bias.shape == (20,)
    layer, _ = make(CONV.format(t="kConvolution", f=32, geo="kernel: 5 pad: 2 stride: 1"),
                    [np.zeros((2, 3, 32, 32))])
    assert layer.shape == (2, 32, 32, 32) and layer.weight.shape == (32, 75)
    layer, _ = make(CONV.format(t="kConvolution", f=2, geo="kernel: 3 stride: 2"),
                    [np.zeros((1, 1, 8, 8))])
    assert layer.shape == (1, 2, 3, 3)  # floor((8 - 3) / 2) + 1


def test_conv_3d_input_is_one_channel_and_without_bias(layout):
    x = rng.standard_normal((2, 5, 5))
    layer = check_layer('type: kConvolution convolution_conf { num_filters: 3 kernel: 3 } '
                        'param { name: "w" }', [x], shape=(2, 3, 3, 3), nparams=1)
    assert layer.bias is None and layer.weight.shape == (3, 9)
    layer, srcs = forward('type: kConvolution convolution_conf { num_filters: 3 kernel: 3 } '
                          'param { name: "w" }', x)
    ref = naive_conv(x[:, None].astype(np.float32), layer.weight.data, None, 3, 3, 0, 0, 1, 1)
    np.testing.assert_allclose(layer.data, ref, rtol=1e-4, atol=1e-5)
    layer.grad = np.ones(layer.shape, np.float32)
    layer.compute_gradient(BACK, srcs)
    assert srcs[0].grad.shape == (2, 5, 5)


def test_conv_agg_grad_accumulates(layout):
    layer, srcs = forward(CONV.format(t="kConvolution", f=2, geo="kernel: 2"),
                          rng.standard_normal((2, 1, 3, 3)))
    layer.grad = rng.standard_normal(layer.shape).astype(np.float32)
    layer.compute_gradient(BACK, srcs)
    once = layer.weight.grad.copy()
    layer.compute_gradient(BACK | job_pb2.kAggGrad, srcs)
    np.testing.assert_allclose(layer.weight.grad, 2 * once, rtol=1e-6)


def test_conv_skips_gradient_of_input_layers(layout):
    layer, srcs = forward(CONV.format(t="kConvolution", f=2, geo="kernel: 2"),
                          rng.standard_normal((2, 1, 3, 3)))
    srcs[0].is_input = True
    layer.grad = np.ones(layer.shape, np.float32)
    layer.compute_gradient(BACK, srcs)
    assert srcs[0].grad is None
    assert np.any(layer.weight.grad)


def test_conv_feature_partition_divides_num_filters():
    layer, _ = make(CONV.format(t="kConvolution", f=8, geo="kernel: 3")
                    + " partition_dim: 1 num_partitions: 4", [np.zeros((2, 3, 5, 5))])
    assert layer.shape == (2, 2, 3, 3) and layer.weight.shape == (2, 27)


def test_conv_registrations():
    assert layer_registry.get(job_pb2.kConvolution) is ConvolutionLayer
    assert layer_registry.get(job_pb2.kCudnnConv) is ConvolutionLayer
    assert layer_registry.get(job_pb2.kCConvolution) is CConvolutionLayer
    assert ConvolutionLayer.src_neuron_connection == 1  # kOneToAll


@pytest.mark.parametrize("conf, shape, message", [
    ("convolution_conf { kernel: 3 }", (2, 1, 5, 5), "convolution_conf.num_filters is required"),
    ("convolution_conf { num_filters: 0 }", (2, 1, 5, 5), "num_filters must be > 0, got 0"),
    ("convolution_conf { num_filters: 2 kernel: 7 }", (2, 1, 5, 5),
     r"kernel_y 7 is larger than the padded input height 5 \(height 5 \+ 2\*pad_y 0\)"),
    ("convolution_conf { num_filters: 2 kernel: 3 kernel_x: 9 pad: 1 }", (2, 1, 5, 5),
     r"kernel_x 9 is larger than the padded input width 7 \(width 5 \+ 2\*pad_x 1\)"),
    ("convolution_conf { num_filters: 2 stride: 0 }", (2, 1, 5, 5), "stride_y .* must be >= 1, got 0"),
    ("convolution_conf { num_filters: 2 }", (2, 25), r"3-D .* or 4-D .* source, got shape \(2, 25\)"),
])
def test_conv_bad_config(conf, shape, message):
    with pytest.raises(LayerError, match=message):
        make(f'type: kConvolution {conf} param {{ name: "w" }}', [np.zeros(shape)])


@pytest.mark.parametrize("params, got", [("", "got 0"),
                                         ('param {name: "a"} param {name: "b"} param {name: "c"}',
                                          "got 3")])
def test_conv_param_count(params, got):
    with pytest.raises(LayerError, match=rf"a kConvolution layer takes 1 or 2 params \(weight, "
                                         rf"optional bias\), {got}"):
        make(f"type: kConvolution convolution_conf {{ num_filters: 2 }} {params}",
             [np.zeros((1, 1, 4, 4))])


@pytest.mark.parametrize("batch_inner", [False, True])
def test_im2col_col2im_are_adjoint(batch_inner):
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    args = ((3, 2), (1, 2), (2, 1))
    col = im2col(x, *args, batch_inner=batch_inner).copy()
    assert col.shape == (3 * 3 * 2, 3 * 8 * 2)  # OH = (6+2-3)//2+1 = 3, OW = (5+4-2)+1 = 8
    c = rng.standard_normal(col.shape).astype(np.float32)
    back = col2im(c, x.shape, *args, batch_inner=batch_inner)
    assert back.shape == x.shape
    np.testing.assert_allclose(np.sum(col * c), np.sum(x * back), rtol=1e-4)


@pytest.mark.parametrize("batch_inner", [False, True])
def test_im2col_entries(batch_inner):
    x = rng.standard_normal((2, 2, 4, 5)).astype(np.float32)
    col = im2col(x, (2, 3), (1, 0), (1, 2), batch_inner=batch_inner)
    oh, ow = 5, 2  # (4+2-2)//1+1, (5-3)//2+1
    col = col.reshape(2, 2, 3, *((oh, ow, 2) if batch_inner else (2, oh, ow)))
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))
    for n, c, i, j, a, b in [(0, 0, 0, 0, 0, 0), (1, 1, 1, 2, 4, 1), (1, 0, 0, 1, 2, 1)]:
        got = col[c, i, j, a, b, n] if batch_inner else col[c, i, j, n, a, b]
        assert got == xp[n, c, a + i, 2 * b + j]


def test_layout_choice_by_output_width():
    assert conv_layer.batch_inner_layout(8) and not conv_layer.batch_inner_layout(24)


def test_lowering_choice_by_input_channels():
    # the first layer of LeNet and cifar10 (one channel): full im2col; the others: row taps
    assert conv_layer.lowering_for(1, 5, 5) == "full"
    assert conv_layer.lowering_for(20, 5, 5) == "rows"
    assert conv_layer.lowering_for(32, 5, 5) == "rows"
    assert conv_layer.lowering_for(64, 1, 1) == "full"  # one kernel row: nothing to shift


def test_im2col_fills_a_given_buffer():
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    args = ((3, 2), (1, 0), (1, 1))
    buf = np.full((3 * 3 * 2 + 1, 2 * 5 * 3), 7, np.float32)
    im2col(x, *args, out=buf[:-1])
    np.testing.assert_array_equal(buf[:-1], im2col(x, *args))
    assert np.all(buf[-1] == 7)


ROW_TAP_GEOMETRIES = [((3, 3), (1, 1), (1, 1)), ((5, 5), (2, 2), (1, 1)), ((3, 2), (2, 0), (2, 1)),
                      ((4, 3), (1, 1), (3, 2)), ((2, 2), (0, 0), (1, 1))]


@pytest.mark.parametrize("kernel, pad, stride", ROW_TAP_GEOMETRIES)
def test_row_taps_windows_hold_the_im2col_rows(kernel, pad, stride):
    """Kernel row i's window holds the im2col rows (c, i, j) (batch inner columns)."""
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    rows = RowTaps(x.shape, kernel, pad, stride, Scratch())
    buf = rows.lower(x)
    full = im2col(x, kernel, pad, stride, batch_inner=True)
    kh, kw = kernel
    full = full.reshape(3, kh, kw, -1)
    for i in range(kh):
        win = rows.window(buf, i)
        np.testing.assert_array_equal(win.reshape(3, kw, -1), full[:, i])
    assert np.all(rows.window(buf, 0, bias=True)[-1] == 1)  # the ones row for the bias
    with pytest.raises(ValueError):
        rows.window(buf, 1, bias=True)


@pytest.mark.parametrize("kernel, pad, stride", ROW_TAP_GEOMETRIES)
def test_row_taps_raise_is_the_adjoint_of_lower(kernel, pad, stride):
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    rows = RowTaps(x.shape, kernel, pad, stride, Scratch())
    buf = rows.lower(x)[:rows.k].copy()
    g = rng.standard_normal(buf.shape).astype(np.float32)
    # only the windows' entries are read: zero the rest of g, as the layer does
    used = np.zeros(buf.shape, bool)
    for i in range(kernel[0]):
        rows.window(used, i)[...] = True
    g[~used] = 0
    gbuf = rows.grad_buffer()
    np.copyto(gbuf, g)
    back = rows.raise_(gbuf)
    np.testing.assert_allclose(np.sum(buf * g), np.sum(x * back), rtol=1e-4)


def test_transpose_into_blocks():
    for shape in [(3, 5000), (5000, 3), (64, 64), (1, 1)]:
        a = rng.standard_normal(shape).astype(np.float32)
        out = np.empty(shape[::-1], np.float32)
        transpose_into(out, a)
        np.testing.assert_array_equal(out, a.T)


# ---------------------------------------------------------------- pooling --
X33 = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
X44 = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)


def test_pooling_hand_example_with_padding(blocks):
    # kernel 2, stride 2, pad 1 on 3x3: ceil((3+2-2)/2)+1 = 3, and the third
    # window would start at 4 >= H + pad = 4, so 2x2 windows {0}, {1,2} per axis
    proto = "type: kCPooling pooling_conf {{ pool: {m} kernel: 2 stride: 2 pad: 1 }}"
    mx, _ = forward(proto.format(m="MAX"), X33)
    np.testing.assert_array_equal(mx.data, [[[[1, 3], [7, 9]]]])
    av, _ = forward(proto.format(m="AVG"), X33)
    # every window is 2x2 inside the padded area: padding counts as zeros
    np.testing.assert_allclose(av.data, [[[[1 / 4, 5 / 4], [11 / 4, 28 / 4]]]])


def test_pooling_hand_example_overhanging_window(blocks):
    # kernel 3, stride 2, pad 1 on 4x4: 3x3 outputs; the last window covers
    # row 3 and pad row 4 (row 5 is past H + pad and does not count)
    proto = "type: kPooling pooling_conf {{ pool: {m} kernel: 3 stride: 2 pad: 1 }}"
    mx, _ = forward(proto.format(m="MAX"), X44)
    np.testing.assert_array_equal(mx.data[0, 0], [[5, 7, 7], [13, 15, 15], [13, 15, 15]])
    av, _ = forward(proto.format(m="AVG"), X44)
    assert av.shape == (1, 1, 3, 3)
    assert av.data[0, 0, 2, 2] == pytest.approx(15 / 4)
    assert av.data[0, 0, 0, 0] == pytest.approx((0 + 1 + 4 + 5) / 9)
    assert av.data[0, 0, 0, 2] == pytest.approx((3 + 7) / 6)  # rows {-1,0,1} x cols {3,4}


@pytest.mark.parametrize("h, w, k, p, s", [(5, 5, 3, 1, 2), (6, 7, 3, 1, 2), (7, 7, 2, 0, 2),
                                           (6, 6, 3, 2, 1), (8, 5, 2, 1, 3), (4, 4, 3, 0, 1),
                                           (24, 24, 2, 0, 2), (8, 8, 2, 0, 3), (10, 7, 3, 0, 2),
                                           (7, 9, 1, 0, 2)])
@pytest.mark.parametrize("method", ["MAX", "AVG"])
def test_pooling_matches_caffe_reference(h, w, k, p, s, method, blocks):
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    layer, _ = forward(f"type: kCPooling pooling_conf {{ pool: {method} kernel: {k} "
                       f"pad: {p} stride: {s} }}", x)
    ref = naive_pool(x, k, p, s, method)
    assert layer.shape == ref.shape
    np.testing.assert_allclose(layer.data, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("geo", ["kernel: 3 pad: 1 stride: 2", "kernel: 2 stride: 2",
                                 "kernel: 3 stride: 1",
                                 "kernel_x: 2 kernel_y: 3 pad_y: 1 stride: 2",
                                 "kernel: 2 stride_x: 4 stride_y: 3", "kernel: 3 stride: 2"])
@pytest.mark.parametrize("method", ["MAX", "AVG"])
def test_pooling_gradient(geo, method, blocks):
    check_layer(f"type: kPooling pooling_conf {{ pool: {method} {geo} }}",
                [distinct((2, 2, 5, 6))])


def test_max_pooling_routes_gradient_to_one_position_per_window(blocks):
    x = np.zeros((1, 1, 4, 4), np.float32)  # all ties: the first position wins
    layer, srcs = forward("type: kPooling pooling_conf { pool: MAX kernel: 2 stride: 2 }", x)
    layer.grad = np.array([[[[1, 2], [3, 4]]]], np.float32)
    layer.compute_gradient(BACK, srcs)
    np.testing.assert_array_equal(srcs[0].grad[0, 0], [[1, 0, 2, 0], [0, 0, 0, 0],
                                                      [3, 0, 4, 0], [0, 0, 0, 0]])
    # overlapping windows accumulate at a shared maximum
    x = np.zeros((1, 1, 3, 3), np.float32)
    x[0, 0, 1, 1] = 5
    layer, srcs = forward("type: kPooling pooling_conf { pool: MAX kernel: 2 stride: 1 }", x)
    layer.grad = np.ones((1, 1, 2, 2), np.float32)
    layer.compute_gradient(BACK, srcs)
    assert srcs[0].grad[0, 0, 1, 1] == 4 and srcs[0].grad.sum() == 4


def naive_max_pool_grad(x, g, k, p, s):
    """Each window's gradient to its first maximum in row-major order."""
    n, c, h, w = x.shape
    gx = np.zeros(x.shape)
    for i in range(n):
        for ch in range(c):
            for a in range(g.shape[2]):
                for b in range(g.shape[3]):
                    hs, ws = a * s - p, b * s - p
                    win = x[i, ch, max(hs, 0):min(hs + k, h), max(ws, 0):min(ws + k, w)]
                    r, q = np.unravel_index(np.argmax(win), win.shape)  # the first maximum
                    gx[i, ch, max(hs, 0) + r, max(ws, 0) + q] += g[i, ch, a, b]
    return gx


@pytest.mark.parametrize("h, w, k, p, s", [(9, 9, 3, 0, 2), (8, 7, 3, 1, 2), (6, 6, 3, 0, 1),
                                           (8, 8, 2, 0, 2), (7, 8, 2, 1, 3)])
def test_max_pooling_gradient_with_ties_matches_reference(h, w, k, p, s, blocks):
    # few distinct values: many windows hold their maximum more than once
    x = rng.integers(0, 3, (2, 3, h, w)).astype(np.float32)
    layer, srcs = forward(f"type: kPooling pooling_conf {{ pool: MAX kernel: {k} pad: {p} "
                          f"stride: {s} }}", x)
    np.testing.assert_array_equal(layer.data, naive_pool(x, k, p, s, "MAX"))
    layer.grad = rng.standard_normal(layer.shape).astype(np.float32)
    layer.compute_gradient(BACK, srcs)
    np.testing.assert_allclose(srcs[0].grad, naive_max_pool_grad(x, layer.grad, k, p, s),
                               rtol=1e-6, atol=1e-6)


def test_avg_pooling_spreads_gradient(blocks):
    layer, srcs = forward("type: kPooling pooling_conf { pool: AVG kernel: 2 stride: 2 pad: 1 }", X33)
    layer.grad = np.ones(layer.shape, np.float32)
    layer.compute_gradient(BACK, srcs)
    np.testing.assert_allclose(srcs[0].grad[0, 0], np.full((3, 3), 0.25))


def test_pooling_3d_input_and_registrations():
    layer, _ = make("type: kCudnnPool pooling_conf { kernel: 2 stride: 2 }", [np.zeros((4, 6, 6))])
    assert layer.shape == (4, 1, 3, 3)
    assert layer_registry.get(job_pb2.kPooling) is PoolingLayer
    assert layer_registry.get(job_pb2.kCudnnPool) is PoolingLayer
    assert layer_registry.get(job_pb2.kCPooling) is CPoolingLayer


@pytest.mark.parametrize("conf, message", [
    ("pooling_conf { kernel: 2 pad: 2 }", "pad_y 2 must be smaller than kernel_y 2"),
    ("pooling_conf { kernel: 9 }", r"kernel_y 9 is larger than the padded input height 5"),
    ("pooling_conf { kernel: 0 }", "kernel_y .* must be >= 1, got 0"),
])
def test_pooling_bad_config(conf, message):
    with pytest.raises(LayerError, match=message):
        make(f"type: kPooling {conf}", [np.zeros((1, 1, 5, 5))])
