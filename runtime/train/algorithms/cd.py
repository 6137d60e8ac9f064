"""CD: contrastive divergence for RBMs (SINGA's CDWorker), `alg: kCD` with
`cd_conf { cd_k: K }` (K >= 1 Gibbs steps; there is no persistent CD).

TrainOneBatch, as in SINGA:
1. positive phase: every layer in topological order, after collecting its
   fresh params, computes its feature with kPositive (input -> fixed lower
   layers -> vis copies its input -> hid computes p(h | v));
2. the first Gibbs step: the RBM layers (vis, then hid) with kNegative |
   kTest, so the vis records the squared reconstruction error;
3. K - 1 more Gibbs steps with kNegative;
4. the RBM layers compute their gradients and send an update of each
   trainable param (W and the visible bias from the vis, the hidden bias
   from the hid; see `runtime.neuralnet.rbm_layer`).

Layers that are not RBM layers (those below the RBM, e.g. an InnerProduct +
Sigmoid loaded from the previous RBM's checkpoint) only run forward: they
get no gradient and no update, so their params stay as loaded. Their flag
has no kTrain (SINGA passes kPositive alone), so they act as a fixed feature
extractor: dropout off, batch norm on its running statistics, no random
crops.

TestOneBatch: every layer with kPositive, then each vis with kNegative |
kTest: the reconstruction error of one Gibbs step from a sample of the
hidden units, "Squared Error = x" in the test line.
"""
from __future__ import annotations

from conf import job_pb2
from runtime.errors import UserError
from runtime.neuralnet.net import NeuralNet
from runtime.neuralnet.rbm_layer import RBMLayer, RBMVisLayer
from runtime.train.worker import Worker, alg_registry

POSITIVE = job_pb2.kPositive | job_pb2.kForward
NEGATIVE = job_pb2.kNegative | job_pb2.kForward


@alg_registry.register(job_pb2.kCD)
class CDWorker(Worker):
    def setup(self) -> None:
        k = self.job.train_one_batch.cd_conf.cd_k
        if k < 1:
            raise UserError(f"train_one_batch.cd_conf.cd_k must be >= 1 (the number of Gibbs "
                            f"steps), got {k}")
        self.cd_k = k
        super().setup()
        if not rbm_layers(self.train_net):
            raise UserError("alg kCD trains RBMs, but the train net has no kRBMVis/kRBMHid "
                            "layers; use alg: kBP for a feed-forward net")

    def train_one_batch(self, step: int, net: NeuralNet) -> None:
        for layer in net.layers:
            for p in layer.params:
                self.channel.collect(p)
            layer.compute_feature(POSITIVE, net.srclayers(layer))
        rbm = rbm_layers(net)
        for layer in rbm:
            layer.compute_feature(NEGATIVE | job_pb2.kTest, net.srclayers(layer))
        for _ in range(self.cd_k - 1):
            for layer in rbm:
                layer.compute_feature(NEGATIVE, net.srclayers(layer))
        flag = job_pb2.kTrain | job_pb2.kBackward
        for layer in rbm:
            layer.compute_gradient(flag, net.srclayers(layer))
            for p in layer.params:
                if p.trainable:
                    self.channel.update(step, p)

    def test_one_batch(self, step: int, phase: int, net: NeuralNet) -> None:
        for layer in net.layers:
            layer.compute_feature(phase | POSITIVE, net.srclayers(layer))
        for layer in net.layers:
            if isinstance(layer, RBMVisLayer):
                layer.compute_feature(phase | NEGATIVE | job_pb2.kTest, net.srclayers(layer))


def rbm_layers(net: NeuralNet) -> list[RBMLayer]:
    """The net's RBM layers in topological order (each vis before its hid)."""
    return [layer for layer in net.layers if isinstance(layer, RBMLayer)]
