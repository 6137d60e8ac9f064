"""Split, Slice, Concate and Dummy: values, consumer order, labels and
numeric gradient checks."""
from __future__ import annotations

import numpy as np
import pytest

from conf import job_pb2
from runtime.errors import LayerError
from runtime.neuralnet.connection_layer import aux_of
from runtime.neuralnet.layer import Layer
from tests.neuralnet.harness import BACK, TRAIN, Source, check_layer, make


class Consumer(Layer):
    """Reads its source's data like a real layer; backward sends a fixed grad."""

    def __init__(self, name: str):
        super().__init__(job_pb2.LayerProto(name=name))

    def setup(self, srclayers):
        self.shape = tuple(srclayers[0].shape_for(self))

    def compute_feature(self, flag, srclayers):
        self.data = srclayers[0].data_for(self)

    def compute_gradient(self, flag, srclayers):
        srclayers[0].set_grad(self, self.grad)


def fanout(proto_text: str, x: np.ndarray, nconsumers: int, aux=None):
    src = Source("src", x, aux)
    layer, _ = make(proto_text, [src])
    consumers = [Consumer(f"c{k}") for k in range(nconsumers)]
    for c in consumers:
        layer.add_dst(c)  # type: ignore[attr-defined]  # a connection layer
    layer.setup([src])  # the net calls add_dst before setup
    for c in consumers:
        c.setup([layer])
    return src, layer, consumers


def check_fanout_gradient(proto_text: str, x: np.ndarray, nconsumers: int) -> None:
    """L = sum_k sum(consumer_k.data * R_k); compare the grad the layer hands
    its source with central differences."""
    src, layer, consumers = fanout(proto_text, x, nconsumers)
    rng = np.random.default_rng(5)

    def loss() -> float:
        layer.compute_feature(TRAIN, [src])
        total = 0.0
        for c, r in zip(consumers, projs):
            c.compute_feature(TRAIN, [layer])
            total += float(np.sum(c.data.astype(np.float64) * r))
        return total

    layer.compute_feature(TRAIN, [src])
    projs = []
    for c in consumers:
        c.compute_feature(TRAIN, [layer])
        projs.append(rng.standard_normal(c.data.shape))
    for c, r in zip(consumers, projs):
        c.grad = r.astype(np.float32)
        c.compute_gradient(BACK, [layer])
    layer.compute_gradient(BACK, [src])
    analytic = np.array(src.grad, dtype=np.float64)
    num = np.zeros(x.shape)
    flat = src.data.reshape(-1)
    for j in range(flat.size):
        old = flat[j]
        flat[j] = old + 1e-2
        up = loss()
        flat[j] = old - 1e-2
        down = loss()
        flat[j] = old
        num.reshape(-1)[j] = (up - down) / 2e-2
    np.testing.assert_allclose(analytic, num, atol=1e-3, rtol=1e-2)


# ------------------------------------------------------------ split ----
def test_split_gives_every_consumer_the_same_data_and_labels():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    src, split, (a, b) = fanout("type: kSplit split_conf {num_splits: 2}", x, 2,
                                aux=np.array([1, 2, 0]))
    split.compute_feature(TRAIN, [src])
    assert split.shape == (3, 4)
    np.testing.assert_array_equal(split.data_for(a), x)
    np.testing.assert_array_equal(split.data_for(b), x)
    np.testing.assert_array_equal(aux_of(split, a), [1, 2, 0])


def test_split_sums_consumer_gradients():
    x = np.zeros((2, 3), np.float32)
    src, split, (a, b) = fanout("type: kSplit split_conf {num_splits: 2}", x, 2)
    split.compute_feature(TRAIN, [src])
    assert split.grad is None
    split.set_grad(a, np.ones((2, 3), np.float32))
    split.set_grad(b, np.full((2, 3), 2.0, np.float32))
    # BP skips a layer whose grad is None: grad is the running sum
    np.testing.assert_array_equal(split.grad, np.full((2, 3), 3.0))
    split.set_grad(b, np.full((2, 3), 4.0, np.float32))  # a consumer sends again: replaced
    split.set_grad(b, np.full((2, 3), 2.0, np.float32))
    split.compute_gradient(BACK, [src])
    np.testing.assert_array_equal(src.grad, np.full((2, 3), 3.0))
    # grads do not leak into the next backward pass
    split.set_grad(a, np.ones((2, 3), np.float32))
    split.compute_gradient(BACK, [src])
    np.testing.assert_array_equal(src.grad, np.ones((2, 3)))


def test_split_gradient_check_two_consumers():
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    check_fanout_gradient("type: kSplit split_conf {num_splits: 2}", x, 2)


# ------------------------------------------------------------ slice ----
@pytest.mark.parametrize("dim", [0, 1])
def test_slice_gives_consumer_k_piece_k(dim):
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    aux = np.array([0, 1, 2, 3])
    src, sl, cs = fanout(f"type: kSlice slice_conf {{slice_dim: {dim} num_slices: 2}}", x, 2, aux)
    sl.compute_feature(TRAIN, [src])
    pieces = np.split(x, 2, axis=dim)
    assert sl.shape == pieces[0].shape
    for c, piece in zip(cs, pieces):
        assert c.shape == piece.shape
        np.testing.assert_array_equal(sl.data_for(c), piece)
    # labels follow the batch pieces when slicing the batch dim
    if dim == 0:
        np.testing.assert_array_equal(sl.aux_data_for(cs[1]), [2, 3])
    else:
        np.testing.assert_array_equal(sl.aux_data_for(cs[1]), aux)


def test_slice_unregistered_consumers_get_pieces_in_call_order():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    src = Source("src", x)
    sl, _ = make("type: kSlice slice_conf {slice_dim: 0 num_slices: 3}", [src])
    sl.compute_feature(TRAIN, [src])
    c = [Consumer(f"c{k}") for k in range(3)]
    np.testing.assert_array_equal(sl.data_for(c[2]), x[0:1])
    np.testing.assert_array_equal(sl.data_for(c[0]), x[1:2])
    np.testing.assert_array_equal(sl.data_for(c[2]), x[0:1])


def test_slice_backward_fills_the_pieces_that_arrived():
    x = np.zeros((2, 4), np.float32)
    src, sl, (a, b) = fanout("type: kSlice slice_conf {slice_dim: 1 num_slices: 2}", x, 2)
    sl.compute_feature(TRAIN, [src])
    sl.set_grad(b, np.ones((2, 2), np.float32))
    np.testing.assert_array_equal(sl.grad, [[0, 0, 1, 1], [0, 0, 1, 1]])
    sl.compute_gradient(BACK, [src])
    np.testing.assert_array_equal(src.grad, [[0, 0, 1, 1], [0, 0, 1, 1]])
    sl.set_grad(a, np.full((2, 2), 2.0, np.float32))  # a new pass starts from zero
    sl.compute_gradient(BACK, [src])
    np.testing.assert_array_equal(src.grad, [[2, 2, 0, 0], [2, 2, 0, 0]])


def test_slice_reassembles_gradient_and_checks():
    x = np.random.default_rng(1).standard_normal((2, 6)).astype(np.float32)
    check_fanout_gradient("type: kSlice slice_conf {slice_dim: 1 num_slices: 3}", x, 3)
    check_fanout_gradient("type: kSlice slice_conf {slice_dim: 0 num_slices: 2}", x, 2)


def test_slice_not_divisible_is_a_layer_error():
    with pytest.raises(LayerError, match=r"num_slices is 4, which does not divide dim 1 \(size 6\)"):
        make("type: kSlice slice_conf {slice_dim: 1 num_slices: 4}", [np.zeros((2, 6))])
    with pytest.raises(LayerError, match="slice_dim is 2"):
        make("type: kSlice slice_conf {slice_dim: 2 num_slices: 1}", [np.zeros((2, 6))])


# ---------------------------------------------------------- concate ----
def test_concate_joins_sources_and_labels():
    a = np.ones((2, 3), np.float32)
    b = np.zeros((2, 2), np.float32)
    layer, srcs = make("type: kConcate concate_conf {concate_dim: 1 num_concates: 2}",
                       [Source("a", a, np.array([4, 5])), Source("b", b)])
    assert layer.shape == (2, 5)
    layer.compute_feature(TRAIN, srcs)
    np.testing.assert_array_equal(layer.data, np.concatenate([a, b], axis=1))
    np.testing.assert_array_equal(layer.aux_data, [4, 5])
    layer, srcs = make("type: kConcate concate_conf {concate_dim: 0}",
                       [Source("a", a[:1], np.array([1])), Source("b", a, np.array([2, 3]))])
    layer.compute_feature(TRAIN, srcs)
    assert layer.shape == (3, 3)
    np.testing.assert_array_equal(layer.aux_data, [1, 2, 3])


def test_concate_gradient_check():
    rng = np.random.default_rng(2)
    check_layer("type: kConcate concate_conf {concate_dim: 1 num_concates: 2}",
                [rng.standard_normal((2, 3)), rng.standard_normal((2, 2))], shape=(2, 5), nparams=0)
    check_layer("type: kConcate concate_conf {concate_dim: 0 num_concates: 3}",
                [rng.standard_normal((1, 2, 2)), rng.standard_normal((2, 2, 2)),
                 rng.standard_normal((1, 2, 2))], shape=(4, 2, 2))


def test_concate_errors():
    with pytest.raises(LayerError, match="takes 2 to"):
        make("type: kConcate", [np.zeros((2, 3))])
    with pytest.raises(LayerError, match=r"agree on every dim except concate_dim 1: "
                                         r"'src0' \[2, 3\], 'src1' \[3, 3\]"):
        make("type: kConcate concate_conf {concate_dim: 1}", [np.zeros((2, 3)), np.zeros((3, 3))])


# ------------------------------------------------------------ dummy ----
def test_dummy_pass_through_gradient_check():
    check_layer("type: kDummy", [np.random.default_rng(3).standard_normal((2, 3))], shape=(2, 3))


def test_dummy_input_and_output():
    layer, _ = make("type: kDummy dummy_conf {input: true shape: 2 shape: 3}", [], seed=7)
    assert layer.is_input and layer.shape == (2, 3)
    layer.compute_feature(TRAIN, [])
    expected = np.random.default_rng(7).random((2, 3), dtype=np.float32)
    np.testing.assert_array_equal(layer.data, expected)
    assert layer.data.dtype == np.float32 and ((0 <= layer.data) & (layer.data < 1)).all()

    src = Source("s", np.zeros((2, 2)))
    out, _ = make("type: kDummy dummy_conf {output: true}", [src], seed=3)
    out.compute_feature(TRAIN, [src])
    out.compute_gradient(BACK, [src])
    assert src.grad.shape == (2, 2) and ((0 <= src.grad) & (src.grad < 1)).all()
    with pytest.raises(LayerError, match="dummy_conf.shape"):
        make("type: kDummy dummy_conf {input: true}", [])
