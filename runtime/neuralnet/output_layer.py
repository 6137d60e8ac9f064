"""Output layers: ArgSort, Accuracy, CSVOutput and RecordOutput.

They end a net that predicts or extracts features (`singa ... -test`) and
have no gradient (`compute_gradient` is a no-op). A prediction chain is
`kSoftmax -> kArgSort {topk} -> kCSVOutput`.

The file writers open their store at the first batch (path used as given:
the caller resolves it), write one record per instance keyed by a running
instance number ("0", "1", ...), flush after every batch and close in
`close()`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from conf import common_pb2, job_pb2
from runtime.errors import LayerError, UserError
from runtime.neuralnet.conf_check import ConfProblem, conf_missing, positive, store_backend
from runtime.neuralnet.connection_layer import aux_of
from runtime.neuralnet.layer import Layer, layer_registry
from runtime.neuralnet.loss_layer import MetricLayer, labels_for, topk_hits

if TYPE_CHECKING:
    from runtime.io.store import Store


class _NoGradient:
    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        """Output layers hand no gradient back."""


def _flat(src: Layer, dst: Layer) -> np.ndarray:
    data = np.asarray(src.data_for(dst), dtype=np.float32)
    return data.reshape(data.shape[0], -1)


def _setup_topk(layer: ArgSortLayer | AccuracyLayer, src: Layer) -> None:
    shape = tuple(src.shape_for(layer))
    layer.batch = shape[0]
    layer.dim = int(np.prod(shape[1:], dtype=np.int64))
    layer.topk = layer.proto.argsort_conf.topk
    if not 1 <= layer.topk <= layer.dim:
        raise LayerError(f"argsort_conf.topk is {layer.topk}, expected 1 to {layer.dim} "
                         f"(the number of scores of '{src.name}')")
    layer.shape = (layer.batch, layer.topk)


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores per row, largest first (ties: lower index first)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@layer_registry.register(job_pb2.kArgSort)
class ArgSortLayer(_NoGradient, Layer):
    """data = [B, topk] indices (as float32) of the largest scores, descending;
    the source's labels pass through."""

    batch: int  # set by setup (_setup_topk)
    dim: int
    topk: int

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        return positive(proto, "argsort_conf", "topk")


    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, 1)
        _setup_topk(self, srclayers[0])

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        self.data = top_indices(_flat(srclayers[0], self), self.topk).astype(np.float32)
        self.aux_data = aux_of(srclayers[0], self)


@layer_registry.register(job_pb2.kAccuracy)
class AccuracyLayer(_NoGradient, MetricLayer):
    """srclayers = {scores, label source}: the fraction of instances whose
    label is among the topk scores (a tie counts as a hit). `data` holds the
    top-k indices, as ArgSort's."""

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        return positive(proto, "argsort_conf", "topk")


    metric_names = ("accuracy",)
    batch: int  # set by setup (_setup_topk)
    dim: int
    topk: int

    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, 2)
        _setup_topk(self, srclayers[0])

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        scores = _flat(srclayers[0], self)
        labels = labels_for(self, srclayers[1], self.batch, self.dim)
        self.data = top_indices(scores, self.topk).astype(np.float32)
        self.add_metrics(accuracy=float(topk_hits(scores, labels, self.topk).mean()))

    def display(self) -> str:
        return "accuracy = %f" % self.metrics()["accuracy"]


class _StoreOutput(_NoGradient, Layer):
    """Writes each instance of its single source as one record of a store."""

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        missing = conf_missing(proto, "store_conf", 'path: "out.csv"')
        if missing:
            return missing
        out: list[ConfProblem] = []
        if not proto.store_conf.path:
            out.append(ConfProblem("store_conf", "store_conf.path is required (the file to write)"))
        return out + store_backend(proto, submit)


    default_backend = "kvfile"

    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, 1)
        conf = self.proto.store_conf
        if not conf.path:
            raise LayerError("store_conf.path is empty; give the file to write")
        self.backend = conf.backend or self.default_backend
        self.path = conf.path
        self.shape = tuple(srclayers[0].shape_for(self))
        self.store: Store | None = None
        self.count = 0  # instances written: the next key

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        from runtime.io.store import open_store

        data = _flat(srclayers[0], self)
        aux = aux_of(srclayers[0], self)
        labels = None if aux is None else np.asarray(aux).reshape(-1).astype(np.int64)
        if labels is not None and labels.shape[0] != data.shape[0]:
            raise UserError(f"layer '{self.name}': {labels.shape[0]} labels from "
                            f"'{srclayers[0].name}' for a batch of {data.shape[0]}")
        if self.store is None:
            try:
                self.store = open_store(self.path, backend=self.backend, mode="w")
            except UserError as e:
                raise UserError(f"layer '{self.name}': {e}") from None
        for value in self.encode(data, labels):
            self.store.write(b"%d" % self.count, value)
            self.count += 1
        self.data = data
        self.store.flush()

    def encode(self, data: np.ndarray, labels: np.ndarray | None) -> list[bytes]:
        raise NotImplementedError

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


@layer_registry.register(job_pb2.kCSVOutput)
class CSVOutputLayer(_StoreOutput):
    """One line per instance: `label,` when the source has labels, then the
    values joined by `store_conf.separator`. Integral values (ArgSort
    indices) print as integers, others as the shortest float32 repr."""

    default_backend = "textfile"

    def encode(self, data: np.ndarray, labels: np.ndarray | None) -> list[bytes]:
        sep = self.proto.store_conf.separator
        if np.array_equal(data, np.round(data)) and np.abs(data).max(initial=0) < 2**24:
            rows = [sep.join(map(str, r)) for r in data.astype(np.int64).tolist()]
        else:
            rows = [sep.join(map(str, r)) for r in data]  # str(np.float32): shortest repr
        if labels is not None:
            rows = [f"{label}{sep}{row}" for label, row in zip(labels.tolist(), rows, strict=False)]
        return [r.encode() for r in rows]


@layer_registry.register(job_pb2.kRecordOutput)
class RecordOutputLayer(_StoreOutput):
    """One `RecordProto{shape, label, data}` per instance (default backend kvfile)."""

    def encode(self, data: np.ndarray, labels: np.ndarray | None) -> list[bytes]:
        shape = self.shape[1:]
        out = []
        for k, row in enumerate(data):
            rec = common_pb2.RecordProto(shape=shape, data=row)
            if labels is not None:
                rec.label = int(labels[k])
            out.append(rec.SerializeToString())
        return out
