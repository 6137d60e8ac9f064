"""Time per training step of the MLP and LeNet examples (batch 64) against
PyTorch CPU with the same shapes and the same thread count, measured in the
same run. Prints the ratios, singa's peak resident memory, and the time per
step of the cifar10-style example (singa only).

    python bench/step_time.py [--threads 2] [--steps 40] [--repeats 4]

Each model runs `--steps` timed steps in `--repeats` equal runs and reports
the mean step time of its fastest run, singa and PyTorch alike: on a shared
machine the other tenants' bursts then inflate neither side.

Needs the example data (`bin/setup`) and PyTorch (`pip install torch==2.13.0`).
Goals (issue 3): MLP <= 0.9x PyTorch's time per step, LeNet <= 1.3x, MLP peak
resident memory <= 1.5 GB; cifar10 <= 50 ms per step.
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
    ap.add_argument("--repeats", type=int, default=4,
                    help="split the timed steps into this many runs; report the fastest")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--settle", type=float, default=0.5,
                    help="seconds of rest before each timed run, so that the other "
                         "framework's idle threads stop spinning")
    server = ap.add_mutually_exclusive_group()
    server.add_argument("--server-thread", dest="threaded", action="store_const", const=True,
                        help="apply updates in a server thread (default: only with a core "
                             "to spare beyond the BLAS threads, as `runtime.single.build`)")
    server.add_argument("--no-server-thread", dest="threaded", action="store_const",
                        const=False, help="apply updates in the worker's thread")
    return ap.parse_args()


ARGS = parse()
THREADED = ARGS.threaded
# BLAS reads its thread count when it loads: set it before numpy is imported.
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)



def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def warm(step):
    """`step` after `--warmup` untimed calls."""
    for _ in range(ARGS.warmup):
        step()
    return step


def fastest_runs(steps: dict) -> dict:
    """Seconds per step of each named step function: the fastest of `--repeats`
    runs of `--steps / --repeats` steps. The runs of the models alternate, so
    that a burst of load from elsewhere falls on all of them alike; a rest
    before each run lets the thread pools of the previous one (OpenBLAS's,
    OpenMP's) go to sleep instead of spinning on the cores."""
    repeats = max(1, min(ARGS.repeats, ARGS.steps))
    n = max(1, ARGS.steps // repeats)
    best = {name: float("inf") for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            time.sleep(ARGS.settle)
            step()  # one untimed step: caches and thread pools of this model
            t = time.perf_counter()
            for _ in range(n):
                step()
            best[name] = min(best[name], (time.perf_counter() - t) / n)
    return best


def singa_step(conf: str, closers: list):
    """A function that runs one training step of the conf's train net (batch
    from the conf); what must be closed after goes to `closers`."""
    from runtime.config import load_job
    from runtime.train.single import build

    job = load_job(str(ROOT / conf), submit=True).proto
    job.test_steps = 0
    job.num_openblas_threads = ARGS.threads
    worker, server = build(job, log=lambda line: None, threaded=THREADED)
    worker.init_params()
    net = worker.train_net
    closers += [net.close, server.close]
    steps = iter(range(1 << 30))

    def step():
        worker.train_one_batch(next(steps), net)

    return warm(step)


def torch_step(model_name: str):
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

    return warm(step)


def main() -> int:
    for f in ("examples/mnist/train_data.bin", "examples/mnist/test_data.bin",
              "examples/mnist/image_mean.bin"):
        if not (ROOT / f).exists():
            print(f"missing {f}: run bin/setup first", file=sys.stderr)
            return 2
    closers: list = []
    try:
        mlp = singa_step("examples/mnist/job.conf", closers)
        mlp()
        mlp_rss = peak_rss_mb()
        lenet = singa_step("examples/mnist/conv.conf", closers)
        try:
            import torch  # noqa: F401
        except ImportError:
            print("PyTorch is not installed: pip install torch==2.13.0", file=sys.stderr)
            return 2
        t = fastest_runs({"mlp": mlp, "torch mlp": torch_step("mlp"),
                          "lenet": lenet, "torch lenet": torch_step("lenet")})
        for close in closers:
            close()
        closers.clear()
        cifar = fastest_runs({"cifar": singa_step("examples/cifar10/job.conf", closers)})["cifar"]
    finally:
        for close in closers:
            close()
    threaded = {True: "yes", False: "no", None: "auto"}[THREADED]
    print(f"threads={ARGS.threads} steps={ARGS.steps} repeats={ARGS.repeats} batch=64 "
          f"server-thread={threaded}")
    print(f"{'model':8} {'singa ms/step':>14} {'torch ms/step':>14} {'ratio':>7} {'goal':>6}")
    for name, key, goal in (("MLP", "mlp", 0.9), ("LeNet", "lenet", 1.3)):
        ours, theirs = t[key], t["torch " + key]
        ratio = ours / theirs
        print(f"{name:8} {ours * 1e3:14.2f} {theirs * 1e3:14.2f} {ratio:7.2f} {goal:6.2f}"
              f"  {'ok' if ratio <= goal else 'MISSED'}")
    print(f"{'cifar10':8} {cifar * 1e3:14.2f} {'-':>14} {'-':>7} {'50 ms':>6}"
          f"  {'ok' if cifar <= 0.050 else 'MISSED'}")
    print(f"MLP peak resident memory (singa, before torch loads): {mlp_rss:.0f} MB "
          "(goal <= 1536 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
