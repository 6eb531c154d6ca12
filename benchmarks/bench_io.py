"""Loading scans: medres3d vs nibabel vs MONAI vs SimpleITK, on the same files, timed alternately.

Every benchmark writes its test data once (a CT phantom), checks that all readers return the
same voxels, then runs the readers one after the other, ``--repeats`` rounds, so that load from
other processes on the machine hits every reader alike. It prints the median seconds of each
reader, its ratio to medres3d, and the peak extra resident memory (Linux), as a markdown table
ready for ``benchmarks/RESULTS.md``.

Benchmarks (``--only`` picks some; each is a ``bench_*`` function registered in ``BENCHMARKS``):

- ``nifti``: a ~190-slice 512x512 int16 ``.nii.gz`` to float32: ``medres3d.load_volume`` vs
  ``nibabel`` (``get_fdata(dtype=float32)``) vs MONAI ``LoadImage`` (its default NibabelReader)
  vs SimpleITK ``ReadImage(..., sitkFloat32)``.

Usage:
    python benchmarks/bench_io.py                      # all benchmarks, 3 rounds
    python benchmarks/bench_io.py --only nifti --repeats 5 --shape 256 256 128
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

Reader = Callable[[], np.ndarray]


def _kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(field))
    except (OSError, StopIteration):
        return None


def measure(fn: Reader) -> tuple[float, float | None]:
    """Run ``fn`` once; return (seconds, peak extra resident memory in MiB, or None off Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset VmHWM (peak) to the current resident size
        base = _kib("VmRSS")
        peak_now = _kib("VmHWM")
        if base is None or peak_now is None or peak_now > base + 1024:
            base = None  # the kernel did not reset the peak: no memory figure rather than a wrong one
    except OSError:
        base = None
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = _kib("VmHWM")
    del result
    memory = None if base is None or peak is None else (peak - base) / 1024
    return seconds, memory


def time_alternately(readers: dict[str, Reader], repeats: int) -> dict[str, list[tuple[float, float | None]]]:
    """Round-robin over ``readers``, ``repeats`` rounds (after one untimed warm-up round)."""
    for fn in readers.values():
        fn()  # warm-up: imports, page cache
    runs: dict[str, list[tuple[float, float | None]]] = {name: [] for name in readers}
    for _ in range(repeats):
        for name, fn in readers.items():
            runs[name].append(measure(fn))
    return runs


def report(title: str, runs: dict[str, list[tuple[float, float | None]]], baseline: str) -> list[str]:
    """A markdown table: median seconds, ratio to ``baseline``, median peak memory."""
    medians = {name: statistics.median(s for s, _ in samples) for name, samples in runs.items()}
    lines = [
        f"### {title}",
        "",
        f"| reader | median s | x {baseline} time | peak extra MiB |",
        "|---|---:|---:|---:|",
    ]
    for name, samples in runs.items():
        memories = [m for _, m in samples if m is not None]
        memory = f"{statistics.median(memories):.0f}" if memories else "n/a"
        lines.append(f"| {name} | {medians[name]:.3f} | {medians[name] / medians[baseline]:.2f} | {memory} |")
    lines.append("")
    return lines


def ct_volume(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """An int16 CT phantom (HU) and its RAS affine (0.7 x 0.7 x 1.25 mm, axial)."""
    from medres3d.synthetic import ct_phantom, make_affine

    spacing = (0.7, 0.7, 1.25)
    hu = ct_phantom(shape, spacing=spacing, lesion=True, seed=0)
    return np.round(hu).astype(np.int16), make_affine(spacing, "axial")


def bench_nifti(workdir: Path, shape: tuple[int, int, int], repeats: int) -> list[str]:
    """``.nii.gz`` (int16, gzip level 6, the zlib default) to float32 voxels."""
    import nibabel as nib
    import SimpleITK as sitk
    from monai.transforms import LoadImage

    from medres3d import load_volume

    path = workdir / f"ct_{'x'.join(map(str, shape))}.nii.gz"
    if not path.exists():
        hu, affine = ct_volume(shape)
        raw = nib.Nifti1Image(hu, affine).to_bytes()
        path.write_bytes(gzip.compress(raw, compresslevel=6))
    monai_load = LoadImage(image_only=True)
    readers: dict[str, Reader] = {
        "medres3d load_volume": lambda: load_volume(path).array,
        "nibabel get_fdata(float32)": lambda: nib.load(path).get_fdata(dtype=np.float32),
        "MONAI LoadImage (NibabelReader)": lambda: monai_load(path).numpy(),
        "SimpleITK ReadImage(float32)": lambda: sitk.GetArrayViewFromImage(
            sitk.ReadImage(str(path), sitk.sitkFloat32)
        ).copy(),
    }
    reference = readers["nibabel get_fdata(float32)"]()
    np.testing.assert_array_equal(readers["medres3d load_volume"]()[0], reference)
    np.testing.assert_array_equal(readers["MONAI LoadImage (NibabelReader)"](), reference)
    np.testing.assert_array_equal(readers["SimpleITK ReadImage(float32)"]().T, reference)
    del reference
    runs = time_alternately(readers, repeats)
    size_mb = path.stat().st_size / 2**20
    grid = "x".join(map(str, shape))
    title = f"NIfTI: {grid} int16 .nii.gz ({size_mb:.0f} MiB), to float32, {repeats} rounds"
    return report(title, runs, baseline="medres3d load_volume")


BENCHMARKS: dict[str, Callable[[Path, tuple[int, int, int], int], list[str]]] = {
    "nifti": bench_nifti,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), default=sorted(BENCHMARKS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 190), metavar=("H", "W", "D"))
    parser.add_argument("--workdir", type=Path, default=None, help="keep the test data here (reused)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_io_") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in args.only:
            print("\n".join(BENCHMARKS[name](workdir, tuple(args.shape), args.repeats)), flush=True)


if __name__ == "__main__":
    main()
