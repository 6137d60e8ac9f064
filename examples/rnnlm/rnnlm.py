"""The rnnlm example's own layers: a word-level recurrent language model
(Mikolov et al., "Extensions of recurrent neural network language model",
2011), as SINGA's examples/rnnlm defined it in user code.

    data       RNNLMData    `window + 1` words of `batchsize` streams of the text
    embedding  kEmbedding   (built in) word t -> x_t, a row of W_emb
    hidden     RNNLMHidden  h_t = sigmoid(x_t + h_{t-1} W_hh^T), unrolled over the window
    loss       RNNLMLoss    class-factorised softmax of word t+1 given h_t; perplexity

They register under their `user_type` names when this module is imported
(`singa submit job.conf --proto rnnlm.proto --module rnnlm.py`), read their
config from the `[rnnlm.data_conf]` / `[rnnlm.loss_conf]` blocks that
rnnlm.proto adds to LayerProto, and plug into the platform's unrolling and
BPTT (`train_one_batch { alg: kBPTT }`):

- a class attribute `recurrent = True` makes the net unrolled, and
  `takes_previous_copy = True` gives copy t of the hidden layer copy t-1 as
  its last srclayer;
- copy t's params are copy 0's (same values, one gradient array), so a
  layer adds its param gradients when the flag has kAggGrad;
- `data_at(t)` / `num_steps` let the unrolled copies of a layer reading the
  data layer (kUnrollOneToAll) take word t, as kCharRNN does for kEmbedding.

The loss layer is not unrolled (`unroll_len: 1`): it reads every copy of the
hidden layer at once, so the output layer is one matrix product per word
class for the whole window, and it reports one perplexity per display.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import rnnlm_pb2  # generated from rnnlm.proto (singa compiles it: --proto rnnlm.proto)

from conf import job_pb2
from runtime.errors import LayerError, UserError
from runtime.neuralnet.layer import Layer, kOneToAll, kOneToMany
from runtime.neuralnet.rnn_input_layer import read_streams
from runtime.plugins import register_layer

F32 = np.float32


def _conf(layer: Layer, ext, block: str):
    """The layer's `[rnnlm.<block>] { }`; a LayerError when it is not written."""
    if not layer.proto.HasExtension(ext):
        raise LayerError(f"a {layer.proto.user_type} layer needs its [rnnlm.{block}] {{ ... }} "
                         "block (rnnlm.proto)")
    return layer.proto.Extensions[ext]


def _add_param_grad(param, grad: np.ndarray, flag: int) -> None:
    """Store a param's gradient, or add it with kAggGrad (the unrolled copies share it)."""
    if param.grad is None:
        param.grad = np.zeros(param.shape, dtype=F32)
    if flag & job_pb2.kAggGrad:
        param.grad += grad
    else:
        param.grad[...] = grad


def read_vocab(path: str, layer: str) -> tuple[dict[str, int], np.ndarray]:
    """word -> index (its line from 0) and the counts, from `word count` lines."""
    index: dict[str, int] = {}
    counts = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                parts = line.split()
                if len(parts) != 2 or not parts[1].isdigit():
                    raise UserError(f"layer '{layer}': line {n} of {path!r} is {line.strip()!r}; "
                                    "expected `word count`")
                index.setdefault(parts[0], len(counts))
                counts.append(int(parts[1]))
    except OSError as e:
        raise UserError(f"layer '{layer}': cannot read vocab_path {path!r}: {e.strerror}") from None
    if "<unk>" not in index:
        raise UserError(f"layer '{layer}': the vocabulary {path!r} has no <unk> word")
    return index, np.array(counts, dtype=np.float64)


# ------------------------------------------------------------------- data --
@register_layer("RNNLMData")
class DataLayer(Layer):
    """`[rnnlm.data_conf] {path, vocab_path, batchsize, window}`: the text as
    `batchsize` equal streams; each batch holds `window + 1` words of every
    stream (step k: `data_at(k)`, word indices as floats, shape [batch]),
    then the streams move on by `window` words (the last word of a batch is
    the first of the next), back to the start at the end. Words that are not
    in the vocabulary are <unk>. Exact resume: `state()` = the offset."""

    is_input = True            # no gradient
    recurrent = True           # a net with this layer is unrolled
    dst_layer_connection = kOneToMany   # every copy of the embedding reads it: no split layer

    def setup(self, srclayers: Sequence[Layer]) -> None:
        if srclayers:
            raise LayerError("RNNLMData reads its words from a file and takes no srclayers")
        conf = _conf(self, rnnlm_pb2.data_conf, "data_conf")
        if conf.batchsize <= 0 or conf.window <= 0:
            raise LayerError(f"[rnnlm.data_conf] batchsize and window must be > 0, got "
                             f"{conf.batchsize} and {conf.window}")
        self.batch, self.window = conf.batchsize, conf.window
        self.num_steps = self.window + 1
        self.shape = (self.batch,)
        self.offset = 0
        self.counts: np.ndarray | None = None
        self._words: np.ndarray | None = None
        self._blobs = np.zeros((self.num_steps, self.batch), dtype=F32)
        self.data = self._blobs[0]

    def prepare(self) -> None:
        """Read the vocabulary and the text (once, at the first batch)."""
        conf = self.proto.Extensions[rnnlm_pb2.data_conf]
        index, self.counts = read_vocab(conf.vocab_path, self.name)
        unk = index["<unk>"]
        try:
            with open(conf.path, encoding="utf-8") as f:
                words = f.read().split()
        except OSError as e:
            raise UserError(f"layer '{self.name}': cannot read path {conf.path!r}: "
                            f"{e.strerror}") from None
        self._words = np.array([index.get(w, unk) for w in words], dtype=np.int64)
        self.stride = len(self._words) // self.batch
        if self.stride <= self.window:
            raise UserError(f"layer '{self.name}': {conf.path!r} has {len(self._words)} words, "
                            f"too few for {self.batch} streams of more than {self.window}")
        self._starts = np.arange(self.batch) * self.stride
        if self.offset >= self.stride:
            self.offset = 0

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        if self._words is None:
            self.prepare()
        # the platform's CharRNN reads its streams the same way
        self.offset = read_streams(self._words, self._starts, self.offset, self.window,
                                   self.stride, self._blobs)
        self.data = self._blobs[0]

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        """Words have no gradient."""

    def data_at(self, k: int) -> np.ndarray:
        return self._blobs[k]

    def state(self) -> dict:
        return {"offset": int(self.offset)}

    def load_state(self, state: dict) -> None:
        self.offset = int(state.get("offset", 0))


# ----------------------------------------------------------------- hidden --
@register_layer("RNNLMHidden")
class HiddenLayer(Layer):
    """Mikolov's recurrent layer, one time step: h_t = sigmoid(x_t + h_{t-1} W^T).

    srclayers = {x_t [batch, H] (the embedding), h_{t-1} (the previous copy,
    added by the unrolling; absent for copy 0, whose h_{t-1} is zero)}. One
    param: W [H, H]. Its output goes to the loss layer and to the next copy,
    whose gradients add up (`set_grad`).
    """

    num_params = 1
    recurrent = True
    takes_previous_copy = True
    dst_layer_connection = kOneToMany   # it adds its consumers' gradients itself

    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, (1, 2))
        shape = tuple(srclayers[0].shape_for(self))
        if len(shape) != 2:
            raise LayerError(f"RNNLMHidden: the input '{srclayers[0].name}' has shape "
                             f"{list(shape)}; expected [batch, dim]")
        if len(srclayers) == 2 and tuple(srclayers[1].shape_for(self)) != shape:
            raise LayerError(f"RNNLMHidden: the previous state '{srclayers[1].name}' has shape "
                             f"{list(srclayers[1].shape_for(self))}; expected {list(shape)}")
        self.shape = shape
        self.w = self.make_param(0, (shape[1], shape[1]))

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        a = np.array(srclayers[0].data_for(self), dtype=F32)
        if len(srclayers) == 2:
            a += srclayers[1].data_for(self) @ self.w.data.T
        np.negative(a, out=a)
        np.exp(a, out=a)
        a += 1
        self.data = np.reciprocal(a, out=a)

    def set_grad(self, dst: Layer, grad: np.ndarray) -> None:
        if self.grad is None:
            self.grad = np.array(grad, dtype=F32).reshape(self.shape)
        else:
            self.grad = self.grad + grad.reshape(self.shape)

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        h = self.data
        da = self.grad * h * (1 - h)
        srclayers[0].set_grad(self, da)
        if len(srclayers) == 2:
            prev = srclayers[1].data_for(self)
            _add_param_grad(self.w, da.T @ prev, flag)
            srclayers[1].set_grad(self, da @ self.w.data)
        else:
            _add_param_grad(self.w, np.zeros(self.w.shape, F32), flag)


# ------------------------------------------------------------------- loss --
@register_layer("RNNLMLoss")
class LossLayer(Layer):
    """Class-factorised softmax over the whole window, and perplexity.

    srclayers = every copy of the hidden layer (h_0 .. h_{T-1}, with
    `unroll_conn_type: kUnrollOneToAll`) and the data layer; word t+1 of the
    data is the target of h_t. `[rnnlm.loss_conf] {nclass, vocab_size}`.
    Params, by position: class weights [nclass, H], class bias [nclass],
    word weights [vocab_size, H], word bias [vocab_size].

    Words are put in classes by frequency (vocabulary order, Mikolov's
    binning: class c holds the words whose cumulative count falls in the
    c-th 1/nclass of the total), so each class is a range of word indices:
        P(w | h) = softmax(h Wc^T + bc)[class(w)] * softmax over the class's words (h Ww^T + bw)[w]
    Loss = mean over the window's words of -ln P(w | h); perplexity =
    exp(loss averaged over every word since the last display).
    """

    num_params = 4
    is_loss = True
    src_neuron_connection = kOneToAll

    def setup(self, srclayers: Sequence[Layer]) -> None:
        data = [s for s in srclayers if hasattr(s, "data_at")]
        hidden = [s for s in srclayers if not hasattr(s, "data_at")]
        if len(data) != 1 or not hidden:
            raise LayerError("RNNLMLoss takes the copies of the hidden layer and one RNNLMData "
                             f"layer as srclayers, got {', '.join(s.name for s in srclayers)}")
        self.data_src, self.hidden = data[0], hidden
        conf = _conf(self, rnnlm_pb2.loss_conf, "loss_conf")
        self.nclass, self.vocab_size = conf.nclass, conf.vocab_size
        if not 0 < self.nclass <= self.vocab_size:
            raise LayerError(f"[rnnlm.loss_conf] needs 0 < nclass <= vocab_size, got nclass "
                             f"{self.nclass} and vocab_size {self.vocab_size}")
        if len(hidden) > self.data_src.num_steps - 1:
            raise LayerError(f"RNNLMLoss: {len(hidden)} hidden steps but '{self.data_src.name}' "
                             f"holds targets for {self.data_src.num_steps - 1}; make its window "
                             "at least the net's unroll_len")
        self.batch, self.dim = tuple(hidden[0].shape_for(self))
        self.steps = len(hidden)
        self.wc = self.make_param(0, (self.nclass, self.dim))
        self.bc = self.make_param(1, (self.nclass,))
        self.ww = self.make_param(2, (self.vocab_size, self.dim))
        self.bw = self.make_param(3, (self.vocab_size,))
        self.shape = (self.steps, self.batch)   # data: -ln P of each target word
        self.bounds: list[tuple[int, int]] | None = None
        self.reset_metrics()

    def classes(self, counts: np.ndarray) -> None:
        if len(counts) != self.vocab_size:
            raise UserError(f"layer '{self.name}': the vocabulary has {len(counts)} words but "
                            f"[rnnlm.loss_conf] vocab_size is {self.vocab_size}")
        before = np.concatenate([[0.0], np.cumsum(counts)[:-1]]) / counts.sum()
        self.word_class = np.minimum((before * self.nclass).astype(np.int64), self.nclass - 1)
        self.bounds = [(int(np.searchsorted(self.word_class, c, "left")),
                        int(np.searchsorted(self.word_class, c, "right")))
                       for c in range(self.nclass)]

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        if self.bounds is None:
            self.classes(self.data_src.counts)
        h = np.concatenate([np.asarray(l.data_for(self), F32) for l in self.hidden])  # [T*B, H]
        target = np.concatenate([self.data_src.data_at(t + 1) for t in range(self.steps)])
        target = target.astype(np.int64)
        cls = self.word_class[target]
        pc = _softmax(h @ self.wc.data.T + self.bc.data)
        rows = np.arange(len(target))
        nll = -np.log(np.maximum(pc[rows, cls], 1e-30))
        self._word_probs = []
        for c in np.unique(cls):
            idx = np.flatnonzero(cls == c)
            lo, hi = self.bounds[c]
            pw = _softmax(h[idx] @ self.ww.data[lo:hi].T + self.bw.data[lo:hi])
            nll[idx] -= np.log(np.maximum(pw[np.arange(len(idx)), target[idx] - lo], 1e-30))
            self._word_probs.append((idx, lo, hi, pw))
        self._h, self._target, self._cls, self._pc = h, target, cls, pc
        self.last_loss = float(nll.mean())
        self.data = nll.reshape(self.shape).astype(F32)
        self._nll_sum += float(nll.sum())
        self._words += len(nll)

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        h, n = self._h, len(self._target)
        rows = np.arange(n)
        dc = self._pc.astype(F32)
        dc[rows, self._cls] -= 1
        dc /= n                                        # the loss is the mean over words
        dh = dc @ self.wc.data
        _add_param_grad(self.wc, dc.T @ h, flag)
        _add_param_grad(self.bc, dc.sum(axis=0), flag)
        dww = np.zeros(self.ww.shape, F32)
        dbw = np.zeros(self.bw.shape, F32)
        for idx, lo, hi, pw in self._word_probs:
            dw = pw.astype(F32)
            dw[np.arange(len(idx)), self._target[idx] - lo] -= 1
            dw /= n
            dh[idx] += dw @ self.ww.data[lo:hi]
            dww[lo:hi] += dw.T @ h[idx]
            dbw[lo:hi] += dw.sum(axis=0)
        _add_param_grad(self.ww, dww, flag)
        _add_param_grad(self.bw, dbw, flag)
        for t, layer in enumerate(self.hidden):
            layer.set_grad(self, dh[t * self.batch:(t + 1) * self.batch])

    # metrics: SINGA's display line, and the stream of metrics.jsonl
    def metrics(self) -> dict[str, float]:
        loss = self._nll_sum / max(self._words, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}

    def reset_metrics(self) -> None:
        self._nll_sum, self._words = 0.0, 0

    def display(self) -> str:
        m = self.metrics()
        return "Loss = %f, perplexity = %f" % (m["loss"], m["perplexity"])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
