"""CharRNNOutput: prints the characters a sampling net predicts.

`char_rnn_conf {vocab_path}`; srclayers = {the predicted indices}, e.g. a
kArgSort (its first column, the top-1, per instance). Each batch writes
`vocab[index]` of every instance to standard output at once (SINGA's
CharRNNOutputLayer), which a job's log and `singa test` show; `text` keeps
what was written. `close()` ends the output with a newline if it has none,
so the lines that follow start on their own.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

from conf import job_pb2
from runtime.errors import LayerError, UserError
from runtime.neuralnet.conf_check import ConfProblem, conf_missing
from runtime.neuralnet.layer import Layer, layer_registry
from runtime.neuralnet.rnn_input_layer import read_texts


@layer_registry.register(job_pb2.kCharRNNOutput)
class CharRNNOutputLayer(Layer):

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        missing = conf_missing(proto, "char_rnn_conf", 'vocab_path: "vocab.txt"')
        if missing:
            return missing
        if not proto.char_rnn_conf.vocab_path:
            return [ConfProblem("char_rnn_conf", "char_rnn_conf.vocab_path is required")]
        return []

    recurrent = True

    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, 1)
        self.vocab_path = self.proto.char_rnn_conf.vocab_path
        if not self.vocab_path:
            raise LayerError("char_rnn_conf.vocab_path is required (the vocabulary whose "
                             "characters the indices name)")
        self.shape = tuple(srclayers[0].shape_for(self))
        self.vocab: str | None = None
        self.stream = None  # None: sys.stdout at the time of writing
        self._written: list[str] = []

    @property
    def text(self) -> str:
        """Everything this layer has written."""
        return "".join(self._written)

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        if self.vocab is None:
            (self.vocab,) = read_texts(self.name, (self.vocab_path, "char_rnn_conf.vocab_path"))
        x = np.asarray(srclayers[0].data_for(self))
        idx = (x.reshape(x.shape[0], -1)[:, 0] if x.ndim > 1 else x.reshape(-1)).astype(np.int64)
        bad = (idx < 0) | (idx >= len(self.vocab))
        if bad.any():
            k = int(np.argmax(bad))
            raise UserError(f"layer '{self.name}': index {idx[k]} of instance {k} (from "
                            f"'{srclayers[0].name}') is outside the vocabulary of "
                            f"{len(self.vocab)} characters ({self.vocab_path!r})")
        chars = "".join(self.vocab[i] for i in idx.tolist())
        out = self.stream or sys.stdout
        out.write(chars)
        out.flush()
        self._written.append(chars)
        self.data = x

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        """Output layers hand no gradient back."""

    def close(self) -> None:
        if self._written and not self._written[-1].endswith("\n"):
            out = self.stream or sys.stdout
            out.write("\n")
            out.flush()
            self._written.append("\n")
