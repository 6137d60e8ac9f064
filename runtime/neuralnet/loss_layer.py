"""Loss layers: SoftmaxLoss (also kCudnnSoftmaxLoss) and EuclideanLoss.

A loss layer ends the forward pass and starts the backward one:
`compute_feature` computes this batch's loss into `last_loss` and adds it to
the running metrics; `compute_gradient` hands the gradient of `last_loss`
to its first source with `src.set_grad(self, g)`.

Metrics, as in SINGA's display: `metrics()` averages every value over the
`compute_feature` calls since the last `reset_metrics()`; `display()` formats
them as SINGA's `ToString` does ("Loss = %f, accuracy = %f"). `display()`
does not reset: the worker calls `reset_metrics()` after displaying.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from conf import job_pb2
from runtime.errors import LayerError, UserError
from runtime.neuralnet.conf_check import ConfProblem, positive
from runtime.neuralnet.connection_layer import aux_of
from runtime.neuralnet.layer import Layer, kOneToAll, layer_registry

FLT_MIN = np.float32(np.finfo(np.float32).tiny)


class MetricLayer(Layer):
    """A layer that reports averaged metrics (loss layers, kAccuracy)."""

    is_loss = True
    metric_names: tuple[str, ...] = ()

    def __init__(self, proto: job_pb2.LayerProto):
        super().__init__(proto)
        self.reset_metrics()

    def add_metrics(self, **values: float) -> None:
        for k, v in values.items():
            self._sums[k] += float(v)
        self._count += 1

    def metrics(self) -> dict[str, float]:
        """Averages since the last reset; 0.0 for each metric before any batch."""
        n = max(self._count, 1)
        return {k: self._sums[k] / n for k in self.metric_names}

    def reset_metrics(self) -> None:
        self._sums = {k: 0.0 for k in self.metric_names}
        self._count = 0


def labels_for(layer: Layer, src: Layer, batch: int, num_classes: int) -> np.ndarray:
    """The int labels `src` provides to `layer`, checked against the batch
    size and the number of classes (a bad label is the user's data)."""
    aux = aux_of(src, layer)
    if aux is None:
        raise UserError(f"layer '{layer.name}': its label source '{src.name}' provides no "
                        "labels (aux_data); is the flag kDeploy, or is it not an input layer?")
    labels = np.asarray(aux).reshape(-1).astype(np.int64)
    if labels.shape[0] != batch:
        raise UserError(f"layer '{layer.name}': {labels.shape[0]} labels from '{src.name}' "
                        f"for a batch of {batch}")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        k = int(np.argmax(bad))
        raise UserError(f"layer '{layer.name}': label {labels[k]} of instance {k} (from "
                        f"'{src.name}') is outside [0, {num_classes}), the number of scores")
    return labels


def topk_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per instance, whether the label's score is among the k largest: fewer
    than k scores are strictly larger (so a tie counts as a hit). An
    instance with a NaN or infinite score is a miss: every comparison with
    NaN is false, so a diverged net would otherwise score all hits."""
    truth = scores[np.arange(scores.shape[0]), labels]
    hits = (scores > truth[:, None]).sum(axis=1) < k
    return hits & np.isfinite(scores).all(axis=1)


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a [B, D] array, shifted by the row max for stability."""
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@layer_registry.register(job_pb2.kSoftmaxLoss, job_pb2.kCudnnSoftmaxLoss)
class SoftmaxLossLayer(MetricLayer):
    """srclayers = {logits [B, ...], label source (its aux_data)}.

    loss = mean_b(-log(max(p[b, label_b], FLT_MIN))) * scale, with p =
    softmax of the flattened logits; accuracy = fraction of the batch whose
    label is in the top-k of p, times scale; grad = (p - onehot) * scale / B.
    `data` holds p in the logits' shape.
    """

    @classmethod
    def check_conf(cls, proto: job_pb2.LayerProto, submit: bool = False) -> list[ConfProblem]:
        """Its own conf block, from the proto alone (see `Layer.check_conf`)."""
        return positive(proto, "softmaxloss_conf", "topk")


    metric_names = ("loss", "accuracy")
    src_neuron_connection = kOneToAll

    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, 2)
        self.shape = tuple(srclayers[0].shape_for(self))
        self.batch = self.shape[0]
        self.dim = int(np.prod(self.shape[1:], dtype=np.int64))
        conf = self.proto.softmaxloss_conf
        self.topk, self.scale = conf.topk, conf.scale
        if not 1 <= self.topk <= self.dim:
            raise LayerError(f"softmaxloss_conf.topk is {self.topk}, expected 1 to {self.dim} "
                             f"(the number of scores of '{srclayers[0].name}')")
        self.last_loss = 0.0

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        x = np.asarray(srclayers[0].data_for(self), dtype=np.float32).reshape(self.batch, self.dim)
        self._labels = labels_for(self, srclayers[1], self.batch, self.dim)
        p = softmax(x)
        rows = np.arange(self.batch)
        nll = -np.log(np.maximum(p[rows, self._labels], FLT_MIN), dtype=np.float64)
        self.last_loss = float(nll.mean()) * self.scale
        accuracy = float(topk_hits(p, self._labels, self.topk).mean()) * self.scale
        self._p = p
        self.data = p.reshape(self.shape)
        self.add_metrics(loss=self.last_loss, accuracy=accuracy)

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        g = self._p.copy()
        g[np.arange(self.batch), self._labels] -= 1.0
        g *= np.float32(self.scale / self.batch)
        srclayers[0].set_grad(self, g.reshape(srclayers[0].shape_for(self)))

    def display(self) -> str:
        m = self.metrics()
        return "Loss = %f, accuracy = %f" % (m["loss"], m["accuracy"])


@layer_registry.register(job_pb2.kEuclideanLoss)
class EuclideanLossLayer(MetricLayer):
    """srclayers = {reconstruction, target (its data)}, of the same size.

    loss = sum((target - recon)^2) / B (no 1/2, as in SINGA). The gradient
    handed to the reconstruction is the exact gradient of that loss,
    2 (recon - target) / B (SINGA hands (recon - target) / B; see
    docs/compat.md). The target gets no gradient.
    """

    metric_names = ("loss",)

    def setup(self, srclayers: Sequence[Layer]) -> None:
        self.check_srclayers(srclayers, 2)
        recon, target = (tuple(s.shape_for(self)) for s in srclayers)
        if int(np.prod(recon)) != int(np.prod(target)) or recon[0] != target[0]:
            raise LayerError(f"the reconstruction '{srclayers[0].name}' {list(recon)} and the "
                             f"target '{srclayers[1].name}' {list(target)} differ in size")
        self.shape = recon
        self.batch = recon[0]
        self.last_loss = 0.0

    def compute_feature(self, flag: int, srclayers: Sequence[Layer]) -> None:
        recon = np.asarray(srclayers[0].data_for(self), dtype=np.float32)
        target = np.asarray(srclayers[1].data_for(self), dtype=np.float32).reshape(recon.shape)
        self._diff = recon - target
        self.data = recon
        self.last_loss = float(np.sum(np.square(self._diff, dtype=np.float64))) / self.batch
        self.add_metrics(loss=self.last_loss)

    def compute_gradient(self, flag: int, srclayers: Sequence[Layer]) -> None:
        srclayers[0].set_grad(self, self._diff * np.float32(2.0 / self.batch))

    def display(self) -> str:
        return "Loss = %f" % self.metrics()["loss"]
