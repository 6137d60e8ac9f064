#!/usr/bin/env python3
"""Make the data of the user-updater example: three interleaved spirals in
the plane (two turns each), a classic task that no linear model separates
and a small MLP learns.

    python examples/user-updater/data.py [--out DIR]

writes into DIR (default: this script's directory) `train.csv` (1500
points) and `test.csv` (300), lines `label,x,y` as kCSVInput reads them.
The points come from a fixed seed, so every machine makes the same files;
it needs only numpy.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CLASSES = 3


def spirals(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n_per_class` points of each spiral arm, with a little noise, shuffled."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(CLASSES):
        r = np.sqrt(rng.uniform(0.05, 1.0, n_per_class))     # even density over the disk
        theta = 4 * np.pi * r + 2 * np.pi * c / CLASSES + rng.normal(0, 0.2, n_per_class)
        xs.append(np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1))
        ys.append(np.full(n_per_class, c))
    x, y = np.concatenate(xs), np.concatenate(ys)
    order = rng.permutation(len(y))
    return x[order], y[order]


def write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    path.write_text("".join(f"{label},{a:.6f},{b:.6f}\n" for label, (a, b) in zip(y, x)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "train.csv", *spirals(500, seed=1))
    write_csv(args.out / "test.csv", *spirals(100, seed=2))
    print(f"wrote {args.out / 'train.csv'} (1500 points) and {args.out / 'test.csv'} (300)")


if __name__ == "__main__":
    main()
