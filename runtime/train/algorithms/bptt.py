"""BPTT: back-propagation through time for unrolled recurrent nets (SINGA's
BPTTWorker), `train_one_batch { alg: kBPTT }`.

Truncated BPTT over one mini-batch: the net is unrolled `unroll_len` steps
(`NeuralNet` does that); no state is carried from one training batch to the
next, as in SINGA.

- Forward: the layers in topological order. For the first copy of each
  layer (unroll_index 0) its params are collected (fresh values from the
  servers) and their gradients zeroed: the copies share those gradient
  arrays and add to them.
- Backward: every layer in reverse order with `kTrain | kBackward |
  kAggGrad`. A param's update is sent once every copy sharing its gradient
  has added its part (SINGA sends it after copy 0, which its order makes the
  last one); only copy 0's params are sent.
- Display and test lines sum each metric over the unrolled loss layers, as
  SINGA's BPTTWorker::Display does: `Loss = ` is the sum of the unroll_len
  per-step losses, i.e. the loss per sequence; the line then gives the mean
  per unrolled step (the loss per character of char-rnn).
- Sampling (a test net with a kRNNDummy whose `dynamic_srclayer` is set,
  SINGA's sample.conf): the dummy reads the named layer's previous output
  (an ArgSort's top-1, or a draw from a Softmax) from the second test batch
  on; and the first copy of each recurrent layer
  that takes a state (GRU) starts from the last copy's state of the previous
  batch. SINGA v0.3 has this "full state" path hard-wired off, so its
  sampling restarts every character from a zero state; here a sample keeps
  its context (see docs/compat.md). Each test pass starts afresh.
"""
from __future__ import annotations

import re

from conf import job_pb2
from runtime.errors import UserError
from runtime.model.param import Param
from runtime.neuralnet.layer import Layer
from runtime.neuralnet.net import NeuralNet
from runtime.neuralnet.rnn_input_layer import RNNDummyLayer
from runtime.train.worker import Worker, alg_registry, format_metrics

_METRIC = re.compile(r"\s*([^=,]+?)\s*=\s*([-+0-9.eEinfa]+)")


def parse_metrics(text: str) -> list[tuple[str, float]]:
    """The `name = value` pairs of a layer's display string, in order
    (SINGA's GetMetricFromString)."""
    out = []
    for part in text.split(","):
        m = _METRIC.fullmatch(part.strip()) if part.strip() else None
        if m:
            try:
                out.append((m.group(1), float(m.group(2))))
            except ValueError:
                continue
    return out


@alg_registry.register(job_pb2.kBPTT)
class BPTTWorker(Worker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._test_batch = 0          # test batches run in the current test pass
        self._sharers: dict[int, dict[int, int]] = {}  # id(net) -> id(head) -> params adding to it
        self._sampling: dict[int, bool] = {}  # id(net) -> whether it feeds back its predictions

    # ------------------------------------------------------- algorithm ---
    def train_one_batch(self, step: int, net: NeuralNet) -> None:
        self.forward(step, job_pb2.kTrain, net)
        self.backward(step, net)

    def test_one_batch(self, step: int, phase: int, net: NeuralNet) -> None:
        self.forward(step, phase, net)
        self._test_batch += 1

    def test(self, step: int, nsteps: int, phase: int, net: NeuralNet, prefix: str) -> dict:
        self._test_batch = 0
        return super().test(step, nsteps, phase, net, prefix)

    def forward(self, step: int, phase: int, net: NeuralNet) -> None:
        flag = phase | job_pb2.kForward
        train = phase == job_pb2.kTrain
        feedback = not train and self._test_batch > 0
        for layer in net.layers:
            srcs = net.srclayers(layer)
            if train and layer.proto.unroll_index == 0:
                for p in layer.params:
                    self.channel.collect(p)
                    if p.trainable and p.grad is not None:
                        p.grad.fill(0)
            if feedback:
                srcs = self._feedback_sources(net, layer, srcs)
            layer.compute_feature(flag, srcs)

    def _feedback_sources(self, net: NeuralNet, layer: Layer, srcs: list[Layer]) -> list[Layer]:
        """Sources of `layer` at a sampling batch after the first."""
        k = layer.proto.unroll_index
        if isinstance(layer, RNNDummyLayer) and layer.dynamic_srclayer:
            dyn = net.copy_of(layer.dynamic_srclayer, k)
            if dyn is None:
                raise UserError(f"layer '{net.origin(layer)}': rnn_dummy_conf.dynamic_srclayer "
                                f"'{layer.dynamic_srclayer}' is not a layer of this net")
            return [dyn]
        if k == 0 and getattr(layer, "takes_previous_copy", False) and self._samples(net):
            copies = net.copies(net.origin(layer)) or [layer]
            return list(srcs) + [copies[-1]]
        return srcs

    def _samples(self, net: NeuralNet) -> bool:
        """Whether the net feeds its predictions back (a sampling net)."""
        found = self._sampling.get(id(net))
        if found is None:
            found = self._sampling[id(net)] = any(
                isinstance(l, RNNDummyLayer) and l.dynamic_srclayer for l in net.layers)
        return found

    def backward(self, step: int, net: NeuralNet) -> None:
        flag = job_pb2.kTrain | job_pb2.kBackward | job_pb2.kAggGrad
        left = dict(self._sharers_of(net))
        for layer in reversed(net.layers):
            if not layer.is_input and (layer.grad is not None or layer.is_loss):
                layer.compute_gradient(flag, net.srclayers(layer))
            for p in layer.params:
                head = net.head(p)
                left[id(head)] -= 1
                if left[id(head)] == 0 and head.trainable:
                    self.channel.update(step, head)
            if not layer.is_loss:
                layer.grad = None

    def _sharers_of(self, net: NeuralNet) -> dict[int, int]:
        """id(head param) -> how many params (its copies and itself) add to its gradient."""
        counts = self._sharers.get(id(net))
        if counts is None:
            counts = {}
            for layer in net.layers:
                for p in layer.params:
                    head: Param = net.head(p)
                    counts[id(head)] = counts.get(id(head), 0) + 1
            self._sharers[id(net)] = counts
        return counts

    # --------------------------------------------------------- display ---
    def _report(self, prefix: str, step: int, phase: str, net: NeuralNet) -> dict:
        """SINGA's BPTTWorker::Display: each metric summed over the loss
        layers (the unrolled copies), then the mean per reporting layer."""
        shown: dict[str, float] = {}
        values: dict[str, float] = {}
        n = 0
        for layer in net.layers:
            m = layer.metrics()
            if m:
                n += 1
                for name, v in parse_metrics(format_metrics(layer)):
                    shown[name] = shown.get(name, 0.0) + v
                for k, v in m.items():
                    values[k] = values.get(k, 0.0) + v
            layer.reset_metrics()
        if shown:
            line = f"{prefix}  " + ", ".join(f"{k} = {v:f}" for k, v in shown.items())
            if n > 1:
                line += (f"  (sum over {n} unrolled loss layers; per layer: "
                         + ", ".join(f"{k} = {v / n:f}" for k, v in shown.items()) + ")")
            self.log(line)
        rec = {"step": step, "phase": phase, **values}
        if n > 1:
            rec.update({f"{k}_per_step": v / n for k, v in values.items()})
            rec["unrolled_loss_layers"] = n
        self.metrics_log.append(rec)
        if self.on_report is not None:
            self.on_report(rec)
        return rec
