"""The user-updater job built in code (runtime.builder) instead of written
as job.conf: the same JobProto, field for field.

    cd examples/user-updater
    singa export build.py -o built.conf     # the job.conf text (same job as job.conf)
    python build.py                          # submit it, Lion shipped with it

Run as a program, it submits the job through the Driver with `lion.py`
shipped to every process (as `singa submit job.conf --module lion.py`).
Imported (by `singa export`, or by the job's processes, which import the
main file), it only defines `build()`.
"""
from __future__ import annotations

import sys

from runtime.builder import Job, Layer, Net


def dense(name: str, n: int, k: int) -> Layer:
    """An inner-product layer with params w<k>, b<k> as in job.conf."""
    return Layer(name, type="kInnerProduct", innerproduct_conf={"num_output": n},
                 param=[{"name": f"w{k}", "init": {"type": "kUniformSqrtFanIn", "low": -1, "high": 1}},
                        {"name": f"b{k}", "init": {"type": "kConstant", "value": 0}}])


def build() -> Job:
    train = Layer("data", type="kCSVInput", include="kTrain",
                  store_conf={"path": "train.csv", "batchsize": 32, "shape": 2, "random_skip": 100})
    test = Layer("data", type="kCSVInput", include="kTest",
                 store_conf={"path": "test.csv", "batchsize": 300, "shape": 2})
    # a chain: each layer reads the one before it, as in Keras's Sequential
    chain = Net.sequential(
        dense("ip1", 64, 1)("data"),
        Layer("relu1", type="kReLU"),
        dense("ip2", 64, 2),
        Layer("relu2", type="kReLU"),
        dense("ip3", 3, 3),
    )
    loss = Layer("loss", type="kSoftmaxLoss", srclayers=["ip3", "data"])
    return Job(
        "user-updater",
        train_steps=600, test_steps=1, test_freq=200, disp_freq=100, seed=1,
        train_one_batch={"alg": "kBP"},
        updater={"user_type": "Lion", "adam_conf": {"beta1": 0.9, "beta2": 0.99},
                 "weight_decay": 0.0001,
                 "learning_rate": {"type": "kFixed", "base_lr": 0.003}},
        net=Net(train, test, *chain, loss),
        cluster={"nworkers_per_group": 2, "workspace": "workspace"},
    )


if __name__ == "__main__":
    # submit loads lion.py here too (registering "Lion") before it validates the job
    sys.exit(build().submit(modules=["lion.py"]))
