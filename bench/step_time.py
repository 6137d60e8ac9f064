"""Time per training step of the MLP and LeNet examples (batch 64) against
PyTorch CPU with the same shapes and the same thread count, measured in the
same run. Prints the ratios and singa's peak resident memory.

    python bench/step_time.py [--threads 2] [--steps 40]

Needs the example data (`bin/setup`) and PyTorch (`pip install torch==2.13.0`).
Goals (issue 3): MLP <= 0.9x PyTorch's time per step, LeNet <= 1.3x, MLP peak
resident memory <= 1.5 GB.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-server-thread", action="store_true",
                    help="apply updates in the worker's thread (no overlap)")
    return ap.parse_args()


ARGS = parse()
THREADED = not ARGS.no_server_thread
# BLAS reads its thread count when it loads: set it before numpy is imported.
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_singa(conf: str) -> float:
    """Seconds per training step of the conf's train net (batch from the conf)."""
    from runtime.config import load_job
    from runtime.driver import build

    job = load_job(str(ROOT / conf), submit=True).proto
    job.test_steps = 0
    job.num_openblas_threads = ARGS.threads
    worker, server = build(job, log=lambda line: None, threaded=THREADED)
    worker.init_params()
    net = worker.train_net
    for s in range(ARGS.warmup):
        worker.train_one_batch(s, net)
    t = time.perf_counter()
    for s in range(ARGS.steps):
        worker.train_one_batch(ARGS.warmup + s, net)
    dt = (time.perf_counter() - t) / ARGS.steps
    net.close()
    server.close()
    return dt


def time_torch(model_name: str) -> float:
    import torch
    from torch import nn

    torch.set_num_threads(ARGS.threads)
    torch.manual_seed(0)

    class STanh(nn.Module):
        def forward(self, x):
            return 1.7159047 * torch.tanh(0.6666667 * x)

    if model_name == "mlp":
        dims = [784, 2500, 2000, 1500, 1000, 500, 10]
        layers: list[nn.Module] = []
        for a, b in zip(dims, dims[1:]):
            layers += [nn.Linear(a, b), STanh()]
        model = nn.Sequential(*layers[:-1])
        x = torch.rand(64, 784)
    else:
        model = nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5),
                              nn.MaxPool2d(2, 2), nn.Flatten(), nn.Linear(800, 500), nn.ReLU(),
                              nn.Linear(500, 10))
        x = torch.rand(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=False)
        loss_fn(model(x), y).backward()
        opt.step()

    for _ in range(ARGS.warmup):
        step()
    t = time.perf_counter()
    for _ in range(ARGS.steps):
        step()
    return (time.perf_counter() - t) / ARGS.steps


def main() -> int:
    for f in ("examples/mnist/train_data.bin", "examples/mnist/test_data.bin"):
        if not (ROOT / f).exists():
            print(f"missing {f}: run bin/setup first", file=sys.stderr)
            return 2
    mlp = time_singa("examples/mnist/job.conf")
    mlp_rss = peak_rss_mb()
    lenet = time_singa("examples/mnist/conv.conf")
    try:
        import torch  # noqa: F401
    except ImportError:
        print("PyTorch is not installed: pip install torch==2.13.0", file=sys.stderr)
        return 2
    t_mlp, t_lenet = time_torch("mlp"), time_torch("lenet")
    print(f"threads={ARGS.threads} steps={ARGS.steps} batch=64")
    print(f"{'model':8} {'singa ms/step':>14} {'torch ms/step':>14} {'ratio':>7} {'goal':>6}")
    for name, ours, theirs, goal in (("MLP", mlp, t_mlp, 0.9), ("LeNet", lenet, t_lenet, 1.3)):
        ratio = ours / theirs
        print(f"{name:8} {ours * 1e3:14.2f} {theirs * 1e3:14.2f} {ratio:7.2f} {goal:6.2f}"
              f"  {'ok' if ratio <= goal else 'MISSED'}")
    print(f"MLP peak resident memory (singa, before torch loads): {mlp_rss:.0f} MB (goal <= 1536 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
