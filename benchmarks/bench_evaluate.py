"""Time of evaluate's metrics: every metric with a stratified bootstrap CI, beyond the predictions.

Simulated scans (binary and 3-class, probabilities from noisy logits) go through
:func:`medres3d.training.bootstrap.bootstrap_metrics`, the step ``medres3d evaluate`` runs after
classifying the scans. Reported: the median of ``--repeats`` runs, after one untimed warm-up.

Usage:
    python benchmarks/bench_evaluate.py                    # 1000 scans, 2000 resamples
    python benchmarks/bench_evaluate.py --scans 5000 --resamples 2000

Example output line:
    2 classes: 1000 scans, 2000 resamples: 0.48 s (median of 5)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from medres3d.training.bootstrap import bootstrap_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=1000)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for k in (2, 3):
        y = rng.integers(0, k, args.scans)
        logits = rng.normal(size=(args.scans, k)) + 1.5 * np.eye(k)[y]
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        names = [f"class{c}" for c in range(k)]
        bootstrap_metrics(y, probs, names, num_resamples=args.resamples)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            bootstrap_metrics(y, probs, names, num_resamples=args.resamples)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        print(f"{k} classes: {args.scans} scans, {args.resamples} resamples: {median:.2f} s "
              f"(median of {args.repeats}; min {min(times):.2f}, max {max(times):.2f})")


if __name__ == "__main__":
    main()
