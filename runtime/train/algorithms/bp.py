"""BP: back-propagation for feed-forward nets (SINGA's BPWorker).

Forward runs the layers in topological order, first collecting each layer's
fresh params; backward runs them in reverse and sends each param's update
right after its layer's gradient is computed, so that communication with
the servers overlaps the rest of the backward pass (all of a layer's params
at once, when the channel has `update_many`).
"""
from __future__ import annotations

from conf import job_pb2
from runtime.neuralnet.net import NeuralNet
from runtime.train.worker import Worker, alg_registry


@alg_registry.register(job_pb2.kBP)
class BPWorker(Worker):
    def train_one_batch(self, step: int, net: NeuralNet) -> None:
        self.forward(step, job_pb2.kTrain, net)
        self.backward(step, net)

    def test_one_batch(self, step: int, phase: int, net: NeuralNet) -> None:
        self.forward(step, phase, net)

    def forward(self, step: int, phase: int, net: NeuralNet) -> None:
        flag = phase | job_pb2.kForward
        for layer in net.layers:
            if phase == job_pb2.kTrain:
                for p in layer.params:
                    self.channel.collect(p)
            layer.compute_feature(flag, net.srclayers(layer))

    def backward(self, step: int, net: NeuralNet) -> None:
        flag = job_pb2.kTrain | job_pb2.kBackward
        # a channel may take a layer's updates at once (the stub's batches them)
        update_many = getattr(self.channel, "update_many", None)
        for layer in reversed(net.layers):
            if layer.is_input:
                continue
            if layer.grad is None and not layer.is_loss:
                continue  # its output reaches no loss: nothing to propagate
            layer.compute_gradient(flag, net.srclayers(layer))
            params = [p for p in layer.params if p.trainable]
            if len(params) > 1 and update_many is not None:
                update_many(step, params)  # one message per server for the layer
            else:
                for p in params:
                    self.channel.update(step, p)
            if not layer.is_loss:
                layer.grad = None
