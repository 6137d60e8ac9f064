"""The layers of recurrent nets, one step each: GRU (with and without bias),
Embedding, OneHot, CharRNN, RNNLabel, RNNDummy and CharRNNOutput.

Each goes through the numeric gradient check of `harness.py`. OneHot,
CharRNN, RNNLabel and CharRNNOutput have nothing differentiable (indices in,
no params): the check runs them with no gradient to compare and the tests
assert that no gradient flows out of them. The same layers unrolled, and
BPTT through them, are in test_unroll.py.
"""
from __future__ import annotations

import io

import numpy as np
import pytest

from conf import job_pb2
from runtime.errors import LayerError, UserError
from runtime.neuralnet.rnn_input_layer import CharRNNInputLayer
from tests.neuralnet.harness import BACK, TRAIN, Source, check_layer, make

GRU_PARAMS = ["z_hx", "r_hx", "c_hx", "z_hh", "r_hh", "c_hh", "z_b", "r_b", "c_b"]


def gru(hdim: int, nparams: int = 9, extra: str = "") -> str:
    params = " ".join(f'param {{ name: "{n}" }}' for n in GRU_PARAMS[:nparams])
    return f"type: kGRU gru_conf {{ dim_hidden: {hdim} {extra} }} {params}"


RNG = np.random.default_rng(5)
X = RNG.standard_normal((4, 5)).astype(np.float32)
H = (RNG.standard_normal((4, 3)) * 0.5).astype(np.float32)


# ------------------------------------------------------------------ GRU ----
def test_gru_with_bias_gradients_of_params_input_and_state():
    layer = check_layer(gru(3), [X, H], shape=(4, 3), nparams=9)
    # SINGA's param order and shapes
    assert [p.name for p in layer.params] == GRU_PARAMS
    assert [p.shape for p in layer.params] == [(3, 5)] * 3 + [(3, 3)] * 3 + [(3,)] * 3


def test_gru_without_bias_takes_six_params():
    layer = check_layer(gru(3, nparams=6), [X, H], shape=(4, 3), nparams=6)
    assert [p.name for p in layer.params] == GRU_PARAMS[:6]


def test_gru_first_step_has_a_zero_state():
    layer = check_layer(gru(3), [X], shape=(4, 3), nparams=9)
    # with h = 0 the recurrent weights and r have no effect: zero gradients
    for name in ("z_hh", "r_hh", "c_hh", "r_hx", "r_b"):
        assert not np.any(layer.params[GRU_PARAMS.index(name)].grad), name


def test_gru_forward_is_the_documented_formula():
    layer, srcs = make(gru(3), [X, H])
    layer.compute_feature(TRAIN, srcs)
    w = {p.name: p.data.astype(np.float64) for p in layer.params}
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    x, h = X.astype(np.float64), H.astype(np.float64)
    z = sig(x @ w["z_hx"].T + h @ w["z_hh"].T + w["z_b"])
    r = sig(x @ w["r_hx"].T + h @ w["r_hh"].T + w["r_b"])
    c = np.tanh(r * (h @ w["c_hh"].T) + x @ w["c_hx"].T + w["c_b"])
    np.testing.assert_allclose(layer.data, z * (h - c) + c, rtol=1e-5, atol=1e-6)


def test_gru_adds_the_gradients_of_its_two_consumers():
    layer, srcs = make(gru(3), [X, H])
    layer.compute_feature(TRAIN, srcs)
    a, b = np.ones((4, 3), np.float32), np.full((4, 3), 2.0, np.float32)
    layer.set_grad(Source("above", a), a)
    layer.set_grad(Source("next", b), b)
    np.testing.assert_array_equal(layer.grad, a + b)
    assert layer.grad is not a and layer.grad is not b  # its own buffer


def test_gru_param_grads_accumulate_under_kAggGrad():
    layer, srcs = make(gru(3), [X, H])
    layer.compute_feature(TRAIN, srcs)
    layer.grad = np.ones((4, 3), np.float32)
    layer.compute_gradient(BACK, srcs)
    once = [p.grad.copy() for p in layer.params]
    layer.grad = np.ones((4, 3), np.float32)
    layer.compute_gradient(BACK | job_pb2.kAggGrad, srcs)
    for p, g in zip(layer.params, once):
        np.testing.assert_allclose(p.grad, 2 * g, rtol=1e-6, atol=1e-7)


def test_gru_conf_errors():
    with pytest.raises(LayerError, match="bias_term is false but 9 params"):
        make(gru(3, extra="bias_term: false"), [X])
    with pytest.raises(LayerError, match="takes 6 or 9 params"):
        make(gru(3, nparams=7), [X])
    with pytest.raises(LayerError, match=r"previous state 'src1' has shape \[4, 2\]"):
        make(gru(3), [X, np.zeros((4, 2), np.float32)])


# ------------------------------------------------------- OneHot, Embedding --
IDX = np.array([3, 0, 6, 3], dtype=np.float32)


def test_onehot_rows_and_no_gradient():
    layer = check_layer("type: kOneHot onehot_conf { vocab_size: 7 }", [IDX], shape=(4, 7),
                        nparams=0, grad_srcs=[])
    np.testing.assert_array_equal(layer.data.argmax(axis=1), IDX.astype(int))
    assert layer.data.sum() == 4
    layer2, srcs = make("type: kOneHot onehot_conf { vocab_size: 7 }", [IDX])
    layer2.compute_feature(TRAIN, srcs)
    layer2.grad = np.ones((4, 7), np.float32)
    layer2.compute_gradient(BACK, srcs)
    assert srcs[0].grad is None


def test_onehot_index_out_of_range_is_named():
    layer, srcs = make("type: kOneHot onehot_conf { vocab_size: 5 }", [IDX])
    with pytest.raises(UserError, match=r"index 6 of instance 2 .* outside \[0, 5\)"):
        layer.compute_feature(TRAIN, srcs)


def test_embedding_gradient_is_a_scatter_add():
    text = 'type: kEmbedding embedding_conf { vocab_size: 7 feature_dim: 3 } param { name: "emb" }'
    layer = check_layer(text, [IDX], shape=(4, 3), nparams=1, grad_srcs=[])
    g = layer.params[0].grad
    layer.compute_feature(TRAIN, [Source("i", IDX)])
    np.testing.assert_array_equal(layer.data, layer.params[0].data[IDX.astype(int)])
    # index 3 appears twice: its row sums two rows of the output's gradient; unused rows are 0
    assert not g[[1, 2, 4, 5]].any() and g[3].any()


def test_embedding_accumulates_under_kAggGrad():
    text = 'type: kEmbedding embedding_conf { vocab_size: 7 feature_dim: 3 } param { name: "emb" }'
    layer, srcs = make(text, [IDX])
    layer.compute_feature(TRAIN, srcs)
    layer.grad = np.ones((4, 3), np.float32)
    layer.compute_gradient(BACK, srcs)
    layer.compute_gradient(BACK | job_pb2.kAggGrad, srcs)
    np.testing.assert_array_equal(layer.params[0].grad[3], [4, 4, 4])


# ------------------------------------------------------- CharRNN, RNNLabel --
def write_text(tmp_path, text: str, vocab: str):
    (tmp_path / "t.txt").write_text(text)
    (tmp_path / "v.txt").write_text(vocab)
    return (f'type: kCharRNN char_rnn_conf {{ path: "{tmp_path / "t.txt"}" '
            f'vocab_path: "{tmp_path / "v.txt"}" batchsize: 2 unroll_len: 3 }}')


def test_charrnn_streams_offsets_and_wrap(tmp_path):
    vocab = "abcdefghijklmnopqrst"
    conf = write_text(tmp_path, vocab, vocab)       # text index = position
    layer = check_layer(conf, [], shape=(2,), nparams=0)   # nothing to check but shapes
    layer, _ = make(conf, [])
    assert layer.num_steps == 4
    batches = []
    for _ in range(5):
        layer.compute_feature(TRAIN, [])
        batches.append(np.stack([layer.data_at(k) for k in range(4)]).T.astype(int).tolist())
    # 2 streams of 10 chars start at 0 and 10; each batch reads 4 chars, then moves on by 3
    assert batches[0] == [[0, 1, 2, 3], [10, 11, 12, 13]]
    assert batches[1] == [[3, 4, 5, 6], [13, 14, 15, 16]]
    assert batches[2] == [[6, 7, 8, 9], [16, 17, 18, 19]]
    # offset 9 < 10: the second stream reads past the end and wraps to the start
    assert batches[3] == [[9, 10, 11, 12], [19, 0, 1, 2]]
    assert batches[4] == batches[0]                  # offset 12 >= 10: back to 0


def test_charrnn_state_resumes_and_partitions_split_the_streams(tmp_path):
    vocab = "abcdefghijklmnopqrst"
    conf = write_text(tmp_path, vocab, vocab)
    a, _ = make(conf, [])
    a.compute_feature(TRAIN, [])
    state = a.state()
    a.compute_feature(TRAIN, [])
    b, _ = make(conf, [])
    b.load_state(state)
    b.compute_feature(TRAIN, [])
    np.testing.assert_array_equal(a.data_at(2), b.data_at(2))
    # partition 1 of 2 reads the second stream of the whole batch
    proto = job_pb2.LayerProto()
    proto.CopyFrom(a.proto)
    proto.num_partitions, proto.partition_id, proto.partition_dim = 2, 1, 0
    c = CharRNNInputLayer(proto)
    c.setup([])
    c.compute_feature(TRAIN, [])
    assert c.shape == (1,) and c.data_at(0).tolist() == [10.0]


def test_charrnn_unknown_character_and_short_text(tmp_path):
    layer, _ = make(write_text(tmp_path, "abc\nabd", "abc\n"), [])
    with pytest.raises(UserError, match=r"character 'd' \(line 2 of .*t.txt'\) is not in the vocabulary"):
        layer.compute_feature(TRAIN, [])
    layer, _ = make(write_text(tmp_path, "abcab", "abc"), [])
    with pytest.raises(UserError, match="too few for 2 streams of more than 3"):
        layer.compute_feature(TRAIN, [])


def test_rnnlabel_takes_the_next_step_as_labels(tmp_path):
    vocab = "abcdefghijklmnopqrst"
    data, _ = make(write_text(tmp_path, vocab, vocab), [])
    data.compute_feature(TRAIN, [])
    for k in range(3):
        label = check_layer("type: kRNNLabel" + f" unroll_index: {k}", [data], shape=(2,),
                            nparams=0, grad_srcs=[])
        np.testing.assert_array_equal(label.aux_data, data.data_at(k + 1).astype(int))
        assert label.aux_data.dtype == np.int32
    with pytest.raises(LayerError, match="copy 3 takes its labels from step 4"):
        make("type: kRNNLabel unroll_index: 3", [data])
    with pytest.raises(LayerError, match="'src0' holds one"):
        make("type: kRNNLabel", [IDX])


# -------------------------------------------------------------- RNNDummy ---
DUMMY = "type: kRNNDummy rnn_dummy_conf { shape: 3 shape: 1 integer: true low: 2 high: 9 %s }"


def test_rnndummy_generates_integers_in_range():
    layer, _ = make(DUMMY % "", [], seed=4)
    seen = set()
    for _ in range(20):
        layer.compute_feature(TRAIN, [])
        assert layer.data.shape == (3, 1) and layer.data.dtype == np.float32
        seen.update(layer.data.ravel().tolist())
    assert seen <= set(range(2, 9)) and len(seen) > 3 and layer.is_input
    with pytest.raises(LayerError, match="low .* must be below high"):
        make("type: kRNNDummy rnn_dummy_conf { shape: 1 low: 1 high: 1 }", [])


def test_rnndummy_passes_data_and_gradient_through():
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    layer = check_layer('type: kRNNDummy rnn_dummy_conf { dynamic_srclayer: "argsort" }', [x],
                        shape=(3, 4), nparams=0)
    assert layer.dynamic_srclayer == "argsort" and not layer.is_input


def test_rnndummy_reads_the_top1_column_of_a_wider_source():
    layer, _ = make(DUMMY % "", [])
    top = Source("argsort", np.array([[5, 1], [2, 0], [7, 3]], np.float32))
    layer.compute_feature(TRAIN | job_pb2.kTest, [top])
    assert layer.data.ravel().tolist() == [5, 2, 7]


def test_rnndummy_draws_from_a_softmax_source():
    layer, _ = make(DUMMY % "", [], seed=9)
    probs = np.array([[0, 0, 1, 0], [0.5, 0.5, 0, 0], [0, 0, 0, 1]], np.float32)
    soft = Source("softmax", probs)
    soft.proto.type = job_pb2.kSoftmax
    draws = []
    for _ in range(40):
        layer.compute_feature(TRAIN | job_pb2.kTest, [soft])
        draws.append(layer.data.ravel().tolist())
    draws = np.array(draws)
    assert (draws[:, 0] == 2).all() and (draws[:, 2] == 3).all()
    assert set(draws[:, 1].tolist()) == {0, 1}


# --------------------------------------------------------- CharRNNOutput ---
def test_charrnn_output_prints_the_vocab_characters(tmp_path):
    (tmp_path / "v.txt").write_text("ab\ncd")
    text = f'type: kCharRNNOutput char_rnn_conf {{ vocab_path: "{tmp_path / "v.txt"}" }}'
    layer = check_layer(text, [np.array([[1], [2]], np.float32)], shape=(2, 1), nparams=0,
                        grad_srcs=[])
    out = io.StringIO()
    layer, srcs = make(text, [np.array([[1, 0], [4, 3]], np.float32)])
    layer.stream = out
    layer.compute_feature(TRAIN, srcs)
    layer.compute_feature(TRAIN, srcs)
    assert out.getvalue() == "bdbd" and layer.text == "bdbd"
    layer.close()  # ends the output on a newline
    assert out.getvalue() == "bdbd\n"
    layer.grad = np.ones((2, 2), np.float32)
    layer.compute_gradient(BACK, srcs)
    assert srcs[0].grad is None
    bad, srcs = make(text, [np.array([9], np.float32)])
    bad.stream = io.StringIO()
    with pytest.raises(UserError, match="index 9 of instance 0 .* outside the vocabulary of 5"):
        bad.compute_feature(TRAIN, srcs)
