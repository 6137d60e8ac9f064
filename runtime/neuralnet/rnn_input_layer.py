"""Input layers of recurrent nets: CharRNN (text), RNNLabel (next-step
labels) and RNNDummy (a generated or fed-back input, for sampling).

A recurrent net is unrolled (`net.py`): the CharRNN layer usually keeps
`unroll_len: 1` and holds the input of every step, `unroll_len + 1` blobs
of character indices; the unrolled OneHot and RNNLabel copies connect to it
with `unroll_conn_type: kUnrollOneToAll` and read their step by position
(`data_at(i)`, `num_steps`).

Text files: the corpus and the vocabulary are read whole. They are decoded
as UTF-8 when both are valid UTF-8, else byte by byte (Latin-1, SINGA's
bytes), so that any file works; the vocabulary's characters in file order
are the indices (a repeated character keeps its first index).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from conf import job_pb2
from runtime.errors import LayerError, UserError
from runtime.neuralnet.conf_check import ConfProblem, conf_missing, positive
from runtime.neuralnet.input_reader import InputLayer
from runtime.neuralnet.layer import Layer, layer_registry
from runtime.neuralnet.neuron_layer import F32, wants_grad


# ------------------------------------------------------------- text files --
def _read_bytes(layer: str, path: str, field: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UserError(f"layer '{layer}': cannot read {field} {path!r}: "
                        f"{e.strerror or e}") from None


def read_texts(layer: str, *files: tuple[str, str]) -> list[str]:
    """The (path, field) files decoded alike: UTF-8 if all are, else Latin-1."""
    raw = [_read_bytes(layer, path, field) for path, field in files]
    try:
        return [r.decode("utf-8") for r in raw]
    except UnicodeDecodeError:
        return [r.decode("latin-1") for r in raw]


def vocab_index(layer: str, vocab: str, path: str) -> dict[str, int]:
    """char -> index (its first position in the vocabulary file)."""
    if not vocab:
        raise UserError(f"layer '{layer}': the vocabulary file {path!r} "
                        "(char_rnn_conf.vocab_path) is empty")
    index: dict[str, int] = {}
    for k, ch in enumerate(vocab):
        index.setdefault(ch, k)
    return index


def encode(layer: str, text: str, index: dict[str, int], path: str) -> np.ndarray:
    """The text as an int32 array of vocabulary indices; a character missing
    from the vocabulary is a UserError naming it and its line."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    keys = np.array(sorted(ord(c) for c in index), dtype=np.uint32)
    vals = np.array([index[chr(k)] for k in keys], dtype=np.int32)
    pos = np.searchsorted(keys, codes)
    pos = np.minimum(pos, len(keys) - 1)
    missing = keys[pos] != codes
    if missing.any():
        at = int(np.argmax(missing))
        line = text.count("\n", 0, at) + 1
        raise UserError(f"layer '{layer}': character {text[at]!r} (line {line} of {path!r}) "
                        "is not in the vocabulary (char_rnn_conf.vocab_path); rebuild the "
                        "vocabulary from this text")
    return vals[pos]


def read_streams(tokens: np.ndarray, starts: np.ndarray, offset: int, window: int, stride: int,
                 out: np.ndarray) -> int:
    """One batch of token streams, SINGA's CharRNN way: `out[k]` gets token
    `start + offset + k` of each stream (`starts`), reads past the end of
    `tokens` wrapping to its start. Returns the next batch's offset:
    `offset + window` (consecutive batches share one token), back to 0 once
    it reaches `stride`, the length of a stream."""
    pos = starts[None, :] + offset + np.arange(out.shape[0])[:, None]
    out[...] = tokens[pos % len(tokens)]
    offset += window
    return 0 if offset >= stride else offset


# ---------------------------------------------------------------- CharRNN --
@layer_registry.register(job_pb2.kCharRNN)
class CharRNNInputLayer(InputLayer):
    """`char_rnn_conf {path, vocab_path, unroll_len=50, batchsize=1}`, as
    SINGA's CharRNNInputLayer.

    The text is split into `batchsize` equal streams: instance i starts at
    i * (len / batchsize). Each batch reads `unroll_len + 1` characters of
    every stream from offset o (blob k holds character o + k of each
    stream, as a float index, shape [batch]), then o += unroll_len, back to
    0 once o reaches len / batchsize: consecutive batches overlap by one
    character, the label of the last step. Reads past the end of the text
    wrap to its start (SINGA reads out of bounds there).

    With the batch partitioned over the workers of a group (partition_dim
    0), partition p reads streams [p*b, (p+1)*b) of the whole batch's, b =
    batchsize / num_partitions.

    Exact resume: `state()` = {"offset": o}.
    """

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        missing = conf_missing(proto, "char_rnn_conf", 'path: "input.txt" vocab_path: "vocab.txt"')
        if missing:
            return missing
        out = [ConfProblem("char_rnn_conf", f"char_rnn_conf.{f} is required")
               for f in ("path", "vocab_path") if not getattr(proto.char_rnn_conf, f)]
        return (out + positive(proto, "char_rnn_conf", "batchsize")
                + positive(proto, "char_rnn_conf", "unroll_len"))


    recurrent = True

    def setup(self, srclayers: Sequence[Layer]) -> None:
        if srclayers:
            raise LayerError("an input layer reads its data from a file and takes no "
                             f"srclayers, got {', '.join(s.name for s in srclayers)}")
        conf = self.proto.char_rnn_conf
        for field in ("path", "vocab_path"):
            if not getattr(conf, field):
                raise LayerError(f"char_rnn_conf.{field} is required")
        if conf.batchsize <= 0:
            raise LayerError(f"char_rnn_conf.batchsize must be > 0, got {conf.batchsize}")
        if conf.unroll_len <= 0:
            raise LayerError(f"char_rnn_conf.unroll_len must be > 0, got {conf.unroll_len}")
        self.total_batch = conf.batchsize
        parts = self.proto.num_partitions if self.proto.partition_dim == 0 else 1
        parts = max(parts, 1)
        if self.total_batch % parts:
            raise LayerError(f"char_rnn_conf.batchsize {self.total_batch} cannot be split over "
                             f"{parts} partitions; make it a multiple of {parts}")
        self.batch = self.total_batch // parts
        self.first_stream = self.proto.partition_id * self.batch if parts > 1 else 0
        self.unroll_len = conf.unroll_len
        self.num_steps = conf.unroll_len + 1
        self.shape = (self.batch,)
        self.offset = 0
        self._text: np.ndarray | None = None
        self._blobs = np.zeros((self.num_steps, self.batch), dtype=F32)
        self.data = self._blobs[0]

    def prepare(self) -> None:
        conf = self.proto.char_rnn_conf
        vocab, text = read_texts(self.name, (conf.vocab_path, "char_rnn_conf.vocab_path"),
                                 (conf.path, "char_rnn_conf.path"))
        index = vocab_index(self.name, vocab, conf.vocab_path)
        self.vocab_size = len(vocab)
        self._text = encode(self.name, text, index, conf.path)
        self.stride = len(self._text) // self.total_batch  # SINGA's max_offset
        if self.stride <= self.unroll_len:
            raise UserError(f"layer '{self.name}': the text {conf.path!r} has {len(self._text)} "
                            f"characters: too few for {self.total_batch} streams of more than "
                            f"{self.unroll_len} (char_rnn_conf.batchsize x unroll_len)")
        streams = np.arange(self.first_stream, self.first_stream + self.batch)
        self._starts = streams * self.stride
        if self.offset >= self.stride:
            self.offset = 0

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        if self._text is None:
            self.prepare()
        assert self._text is not None  # prepare() read it
        self.offset = read_streams(self._text, self._starts, self.offset, self.unroll_len,
                                   self.stride, self._blobs)
        self.data = self._blobs[0]

    def data_at(self, k: int) -> np.ndarray:
        """The character indices of step k of this batch, shape [batch]."""
        return self._blobs[k]

    def state(self) -> dict:
        return {"offset": int(self.offset)}

    def load_state(self, state: dict) -> None:
        self.offset = int(state.get("offset", 0))


# --------------------------------------------------------------- RNNLabel --
@runtime_checkable
class MultiStep(Protocol):
    """A source that holds every step (e.g. kCharRNN): step k by `data_at(k)`."""

    def data_at(self, k: int) -> np.ndarray: ...


@layer_registry.register(job_pb2.kRNNLabel)
class RNNLabelLayer(InputLayer):
    """The labels of unrolled copy i: step i + 1 of its multi-step source
    (the next character), as int `aux_data` [batch] for a loss layer; `data`
    holds the same indices as floats."""

    recurrent = True

    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, 1)
        src = srclayers[0]
        k = self.proto.unroll_index
        steps = getattr(src, "num_steps", None)
        if steps is None or not hasattr(src, "data_at"):
            raise LayerError(f"a kRNNLabel layer reads step i+1 of a source that holds every "
                             f"step (e.g. kCharRNN, with unroll_conn_type: kUnrollOneToAll); "
                             f"'{src.name}' holds one")
        if k + 1 >= steps:
            raise LayerError(f"unrolled copy {k} takes its labels from step {k + 1} of "
                             f"'{src.name}', which holds {steps} steps; make its unroll_len "
                             "(char_rnn_conf.unroll_len) at least the net's unroll_len")
        self.shape = (tuple(src.shape_for(self))[0],)

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        src = srclayers[0]
        assert isinstance(src, MultiStep)  # setup checked that it has data_at
        labels = src.data_at(self.proto.unroll_index + 1)
        self.data = labels
        self.aux_data = labels.astype(np.int32)


# --------------------------------------------------------------- RNNDummy --
@layer_registry.register(job_pb2.kRNNDummy)
class RNNDummyLayer(Layer):
    """`rnn_dummy_conf {dynamic_srclayer, shape, integer, low, high}`: the
    input of a sampling net.

    Without a source it generates `shape` values drawn from U[low, high)
    with the layer's rng, floored when `integer` (a random first
    character). With a source it passes the source's data through (and its
    gradient back): at every test batch after the first, the BPTT worker
    hands it the layer named `dynamic_srclayer` (in an unrolled net, the
    copy with the same index) as its source, so the net reads back its own
    last prediction. A source of another size than `shape` gives, per
    instance, its first column (the top-1 of a kArgSort, SINGA's greedy
    choice), or, when it is a kSoftmax, an index drawn from its
    probabilities with the layer's rng (sampling; an addition to SINGA,
    whose RNNDummy cannot read a softmax).
    """

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        if not proto.srclayers and not proto.rnn_dummy_conf.shape:
            return [ConfProblem("type", "a kRNNDummy layer with no srclayers needs "
                                "rnn_dummy_conf { shape: ... }")]
        return []


    recurrent = True

    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, (0, 1))
        conf = self.proto.rnn_dummy_conf
        self.dynamic_srclayer = conf.dynamic_srclayer
        self.integer, self.low, self.high = conf.integer, float(conf.low), float(conf.high)
        if srclayers:
            self.shape = tuple(srclayers[0].shape_for(self))
        else:
            if not conf.shape or min(conf.shape) < 1:
                raise LayerError(f"a kRNNDummy layer with no srclayers generates its data: "
                                 f"rnn_dummy_conf.shape must list positive dims (batch "
                                 f"first), got {list(conf.shape)}")
            if self.low >= self.high:
                raise LayerError(f"rnn_dummy_conf draws from U[low, high): low ({self.low:g}) "
                                 f"must be below high ({self.high:g})")
            self.shape = tuple(conf.shape)
        # a generator starts the forward pass, like an input layer
        self.is_input = not srclayers

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        if not srclayers:
            x = self.rng.uniform(self.low, self.high, size=self.shape)
            if self.integer:
                x = np.floor(x)
            self.data = x.astype(F32)
            return
        src = srclayers[0]
        x = np.asarray(src.data_for(self), dtype=F32)
        size = int(np.prod(self.shape))
        if x.size != size:
            if x.ndim >= 2 and x.shape[0] == self.shape[0] and size == self.shape[0]:
                rows = x.reshape(x.shape[0], -1)
                if src.proto.type in (job_pb2.kSoftmax, job_pb2.kCudnnSoftmax):
                    x = self._draw(rows)
                else:
                    x = rows[:, 0]
            else:
                raise UserError(f"layer '{self.name}': its source '{srclayers[0].name}' gives "
                                f"shape {list(x.shape)}; expected {list(self.shape)} (or "
                                f"[{self.shape[0]}, k], whose first column is used)")
        self.data = x.reshape(self.shape)

    def _draw(self, probs: np.ndarray) -> np.ndarray:
        """One index per row, drawn with the row's probabilities."""
        p = probs.astype(np.float64)
        cum = np.cumsum(p, axis=1)
        u = self.rng.random(p.shape[0]) * cum[:, -1]
        idx = (cum < u[:, None]).sum(axis=1)
        return np.minimum(idx, p.shape[1] - 1).astype(F32)

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        if not srclayers or not wants_grad(srclayers[0]) or self.grad is None:
            return
        src = srclayers[0]
        src_shape = tuple(src.shape_for(self))
        if int(np.prod(src_shape)) == int(np.prod(self.shape)):
            src.set_grad(self, np.asarray(self.grad, dtype=F32).reshape(src_shape))
