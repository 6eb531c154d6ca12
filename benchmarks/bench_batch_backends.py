"""A folder batch with each backend: scans per second end to end, the network's share, bf16's error.

Runs ``Classifier.predict_many`` (what ``medres3d batch`` runs, with loader worker processes) over
every scan under a folder once per backend and precision, and reports scans per second, the
fraction of the wall time spent in the network's forward passes (the rest: loading, preprocessing
and window cutting not hidden behind compute) and the largest probability difference against
PyTorch fp32 on the same scans.

Usage:
    python benchmarks/bench_batch_backends.py DEMO/run/model.safetensors DEMO/data/dicom_tree
    python benchmarks/bench_batch_backends.py MODEL ROOT --runs torch:fp32,openvino:bf16 --workers 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medres3d.inference.batch import discover
from medres3d.inference.classifier import Classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="model file (.safetensors)")
    parser.add_argument("root", help="folder of DICOM series and NIfTI files")
    parser.add_argument("--runs",
                        default="torch:fp32,torch:bf16,onnxruntime:fp32,openvino:fp32,openvino:bf16",
                        help="comma-separated backend:precision pairs (the first is the reference)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    items = [item.scan for item in discover(args.root).items]
    reference: list[dict[str, float]] | None = None
    shown: dict[str, bool] = {}
    print(f"{len(items)} scans under {args.root}, {args.workers} loader workers")
    print(f"{'backend':<20}{'scans/s':>9}{'network share':>15}{'ok':>5}{'max |dp| vs first':>19}")
    # two rounds, the first untimed: file cache, fork server and imports warm for every backend alike
    for run in [*args.runs.split(","), *args.runs.split(",")]:
        backend, precision = run.split(":")
        clf = Classifier.load(args.model, device="cpu", backend=backend, precision=precision, evidence=False)
        clf.warm_up()
        network_seconds = [0.0]
        forward = clf.net.forward

        def timed(x, forward=forward, network_seconds=network_seconds):
            start = time.perf_counter()
            out = forward(x)
            network_seconds[0] += time.perf_counter() - start
            return out

        clf.net.forward = timed
        start = time.perf_counter()
        predictions = list(clf.predict_many(items, workers=args.workers))
        wall = time.perf_counter() - start
        probabilities = [p.probabilities for p in predictions]
        if run not in shown:  # the warm-up round
            shown[run] = True
            continue
        reference = reference or probabilities
        diff = max((abs(p[k] - r[k]) for p, r in zip(probabilities, reference, strict=True) for k in r),
                   default=0.0)
        print(f"{run:<20}{len(items) / wall:>9.2f}{network_seconds[0] / wall:>15.2f}"
              f"{sum(p.ok for p in predictions):>5}{diff:>19.1e}")


if __name__ == "__main__":
    main()
