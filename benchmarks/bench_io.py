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
- ``dicom``: a ~190-slice 512x512 CT series folder to float32 HU: ``medres3d.load_volume`` vs
  SimpleITK ``ImageSeriesReader`` vs MONAI ``LoadImage`` (PydicomReader; ITKReader when ``itk`` is
  installed).
- ``dicom_4d``: a diffusion-like single-frame series (30 volumes of 96x96x40: b0 + 29
  directions, 1200 files), a Siemens-like mosaic series (30 files of 96x96x40) and one Enhanced
  MR file of the same 30 volumes (1200 frames) to one 4D float32 array:
  ``load_dicom_series(as_4d=True)`` (scan included, nothing cached) vs dcm2niix converting the
  folder to uncompressed NIfTI (``-z n``; its time includes writing the .nii, not reading it).
- ``dicom_scan``: header scan rate (files/s) over a tree of 3000 files: ``scan_dicom_tree``
  (threads, serial) vs SimpleITK/GDCM's series scan vs a plain pydicom loop.

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
        "SimpleITK ReadImage(float32)": lambda: sitk.GetArrayFromImage(
            sitk.ReadImage(str(path), sitk.sitkFloat32)
        ),
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


# ---------------------------------------------------------------------------------------------
# DICOM (medres3d.io.dicom): series loading and header scanning
# ---------------------------------------------------------------------------------------------


def _dicom_series_folder(workdir: Path, shape: tuple[int, int, int]) -> Path:
    """The CT phantom written once as a classic single-frame series (shuffled file names)."""
    from medres3d.synthetic import write_dicom_series

    folder = workdir / f"dicom_{'x'.join(map(str, shape))}"
    done = workdir / f"{folder.name}.complete"  # outside the folder, so no reader sees it
    if not done.exists():
        hu, affine = ct_volume(shape)
        write_dicom_series(hu.astype(np.float32), affine, folder)
        done.touch()
    return folder


def bench_dicom(workdir: Path, shape: tuple[int, int, int], repeats: int) -> list[str]:
    """A DICOM series folder (one 512x512 CT slice per file) to float32 voxels (HU)."""
    import SimpleITK as sitk
    from monai.transforms import LoadImage

    from medres3d import load_volume

    folder = _dicom_series_folder(workdir, shape)

    def simpleitk() -> sitk.Image:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        reader.SetOutputPixelType(sitk.sitkFloat32)
        return reader.Execute()  # the image itself: SimpleITK is not charged for a NumPy copy

    pydicom_reader = LoadImage(reader="PydicomReader", image_only=True)
    readers: dict[str, Reader] = {
        "medres3d load_volume": lambda: load_volume(folder).array,
        "SimpleITK ImageSeriesReader(float32)": simpleitk,
        "MONAI LoadImage(PydicomReader)": lambda: pydicom_reader(folder).numpy(),
    }
    notes = []
    try:
        import itk  # noqa: F401  (MONAI's ITKReader needs it; it is large and not a dependency)

        itk_reader = LoadImage(reader="ITKReader", image_only=True)
        readers["MONAI LoadImage(ITKReader)"] = lambda: itk_reader(folder).numpy()
    except ImportError:
        notes.append("MONAI LoadImage(ITKReader): skipped, the `itk` package is not installed.")
    reference = readers["medres3d load_volume"]()[0]
    image = simpleitk()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image).T, reference)
    del image
    for name in readers:
        if name.startswith("MONAI"):
            np.testing.assert_array_equal(readers[name](), reference)
    del reference
    runs = time_alternately(readers, repeats)
    size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    grid = "x".join(map(str, shape))
    title = f"DICOM series: {grid} CT, {shape[2]} files ({size_mb:.0f} MiB), to float32 HU, {repeats} rounds"
    return [*report(title, runs, baseline="medres3d load_volume"), *notes, ""]


def _dicom_tree(workdir: Path, num_series: int, num_slices: int) -> tuple[Path, int]:
    """A tree of small CT series (64x64 slices), one folder per series, written once."""
    from medres3d.synthetic import make_affine, write_dicom_series

    root = workdir / f"dicom_tree_{num_series}x{num_slices}"
    done = workdir / f"{root.name}.complete"
    if not done.exists():
        volume = np.random.default_rng(0).integers(-1000, 1000, (64, 64, num_slices)).astype(np.float32)
        for n in range(num_series):
            folder = root / f"patient{n // 3:03d}" / f"series{n % 3}"
            write_dicom_series(volume, make_affine((0.7, 0.7, 1.0)), folder, series_number=n)
        done.touch()
    return root, num_series * num_slices


def bench_dicom_scan(workdir: Path, shape: tuple[int, int, int], repeats: int) -> list[str]:
    """Header scan rate (files/s) over a tree of a few thousand files; ``shape`` is not used."""
    import os

    import pydicom
    import SimpleITK as sitk

    from medres3d.io.dicom import scan as dicom_scan

    root, num_files = _dicom_tree(workdir, num_series=30, num_slices=100)

    def gdcm_scan() -> list[tuple[str, ...]]:
        found = []
        for folder, _, names in os.walk(root):
            if names:
                for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder):
                    found.append(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid))
        return found

    readers: dict[str, Reader] = {
        "medres3d scan_dicom_tree (default: threads)": lambda: dicom_scan.scan_dicom_tree(root),
        "medres3d scan_dicom_tree (workers=1)": lambda: dicom_scan.scan_dicom_tree(root, workers=1),
        "SimpleITK/GDCM series IDs + file names, per folder": gdcm_scan,
        "pydicom dcmread(stop_before_pixels) loop": lambda: [
            pydicom.dcmread(p, stop_before_pixels=True) for p in dicom_scan.list_files(root, True)
        ],
    }
    scan = dicom_scan.scan_dicom_tree(root)
    if len(scan.series) != 30 or scan.skipped:
        raise RuntimeError(f"scan found {len(scan.series)} series and skipped {len(scan.skipped)} files")
    if sum(len(files) for files in gdcm_scan()) != num_files:
        raise RuntimeError("SimpleITK/GDCM did not find every file")
    runs = time_alternately(readers, repeats)
    title = f"DICOM header scan: {num_files} files in 30 series folders (64x64 CT), {repeats} rounds"
    lines = report(title, runs, baseline="medres3d scan_dicom_tree (default: threads)")
    rates = {name: num_files / statistics.median(s for s, _ in samples) for name, samples in runs.items()}
    lines += [f"- {name}: {rate:,.0f} files/s" for name, rate in rates.items()]
    return [*lines, ""]


def bench_dicom_4d(workdir: Path, shape: tuple[int, int, int], repeats: int) -> list[str]:
    """4D single-frame, mosaic and Enhanced diffusion series: medres3d vs dcm2niix (``--shape`` unused)."""
    import shutil
    import subprocess

    from medres3d.io.dicom import load_dicom_series
    from medres3d.io.dicom.framegroups import clear_cache
    from medres3d.synthetic import make_affine
    from medres3d.synthetic.dicom_4d import write_enhanced_4d, write_multivolume_series, write_siemens_mosaic

    dcm2niix = shutil.which("dcm2niix") or shutil.which(str(Path(sys.executable).parent / "dcm2niix"))
    num, size = 30, (96, 96, 40)
    rng = np.random.default_rng(0)
    volumes = [rng.integers(0, 2000, size).astype(np.float64) for _ in range(num)]
    directions = rng.normal(size=(num, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    directions[0] = 0
    b_values = [0] + [1000] * (num - 1)
    affine = make_affine((2.0, 2.0, 3.0), "oblique")
    folders = {"single-frame": workdir / "dwi_single", "mosaic": workdir / "dwi_mosaic",
               "Enhanced MR, one file": workdir / "dwi_enhanced"}  # fmt: skip
    if not folders["single-frame"].exists():
        write_multivolume_series(
            volumes, affine, folders["single-frame"], b_values=b_values, gradients=directions
        )
    if not folders["mosaic"].exists():
        write_siemens_mosaic(volumes, affine, folders["mosaic"], b_values=b_values, gradients=directions)
    if not folders["Enhanced MR, one file"].exists():
        write_enhanced_4d(volumes, affine, folders["Enhanced MR, one file"] / "dwi.dcm", b_values=b_values,
                          gradients=directions)  # fmt: skip
    lines = []
    for kind, folder in folders.items():
        volume = load_dicom_series(folder, as_4d=True)
        assert volume.shape == (num, *size) and np.array_equal(volume.array, np.stack(volumes))

        def convert(folder: Path = folder) -> np.ndarray:
            out = workdir / "dcm2niix_out"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            subprocess.run([dcm2niix, "-z", "n", "-f", "%s_%e", "-o", str(out), str(folder)],
                           check=True, capture_output=True)  # fmt: skip
            return np.zeros(1)

        def first_load(folder: Path = folder) -> np.ndarray:
            clear_cache()  # a first load, as for a user: no functional groups cached from a round before
            return load_dicom_series(folder, as_4d=True).array

        readers: dict[str, Reader] = {"medres3d": first_load}
        if dcm2niix:
            readers["dcm2niix -z n"] = convert
        title = f"DICOM 4D, {kind}: {num} volumes of {size[0]}x{size[1]}x{size[2]}"
        lines += report(title, time_alternately(readers, repeats), "medres3d")
    return lines


BENCHMARKS: dict[str, Callable[[Path, tuple[int, int, int], int], list[str]]] = {
    "nifti": bench_nifti,
    "dicom": bench_dicom,
    "dicom_4d": bench_dicom_4d,
    "dicom_scan": bench_dicom_scan,
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
