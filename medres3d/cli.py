"""The ``medres3d`` command line.

Each command imports what it needs inside its body, so ``medres3d --help`` starts instantly
(no torch, MONAI or SimpleITK at start-up).

Example:
    $ medres3d summary --input-size 224 224 64 3 --classes 10
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer


@contextlib.contextmanager
def _usage_errors() -> Iterator[None]:
    """The project's errors (bad config, model, scan or option) as ``error: ...`` and exit code 2."""
    from medres3d.errors import MedRes3DError

    try:
        yield
    except MedRes3DError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err


app = typer.Typer(
    name="medres3d",
    help="3D residual networks for CT and MRI classification.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="training config YAML (sample_configs/, docs/training.md)")],
    resume: Annotated[bool, typer.Option("--resume", help="continue from output_dir/checkpoint.pt")] = False,
    no_progress: Annotated[bool, typer.Option(
        "--no-progress", help="no progress bar, one plain line per epoch (the default when stderr is not "
                              "a terminal: logs, CI)")] = False,
    folds: Annotated[int | None, typer.Option(
        "--folds", help="K-fold cross-validation (stratified, grouped by patient): a run per fold in "
                        "output_dir/fold_K and a summary; default: the config's cross_validation.folds",
        show_default=False)] = None,
) -> None:
    """Train a network from a YAML config; under torchrun, data-parallel over all processes.

    With --folds K (or cross_validation.folds), one run per fold and cv_summary.md/.json,
    oof_predictions.csv and roc_folds.png in output_dir; --resume skips finished folds.

    Writes model.safetensors, metrics.csv, config.yaml (resolved), training_curves.png and
    confusion_matrix.png to the config's output_dir. Rows per class and one line per epoch go
    to stderr; the summary (best epoch as logged, then the saved model re-measured) to stdout.

    Example: torchrun --nproc_per_node 4 -m medres3d.cli train sample_configs/ct_resnet18_hu_window.yaml
    """
    from medres3d.runtime import process_place
    from medres3d.training import Trainer
    from medres3d.training.config import load_config

    with _usage_errors():
        train_config = load_config(config)
        if folds is not None or train_config.cross_validation.folds is not None:
            from medres3d.training.cv import cross_validate

            cv = cross_validate(train_config, folds=folds, resume=resume, progress=not no_progress)
            if process_place().rank == 0:
                typer.echo(cv.to_markdown())
                typer.echo(f"run folder: {cv.run_dir} ({', '.join(sorted(cv.files))}, fold_1/ ...)")
            return
        result = Trainer(train_config, resume=resume, progress=not no_progress).fit()

    if process_place().rank != 0:
        return

    def shown(metrics: dict) -> str:
        return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if v is not None) or "none defined"

    trained = f"trained {result.epochs_run} epoch(s){' (early stopping)' if result.stopped_early else ''}"
    if result.best_epoch is None:
        typer.echo(f"{trained}; no validation data (the model holds the last epoch's weights)")
    else:
        # The saved model is measured again: population BatchNorm statistics (or output_network:
        # last) make its numbers differ from the best epoch's row of metrics.csv; both are shown.
        typer.echo(f"{trained}; best epoch {result.best_epoch} (logged: {shown(result.best_metrics)})")
        after = " after BatchNorm re-estimation" if train_config.training.population_bn_stats else ""
        typer.echo(f"final model{after} (weights of epoch {result.saved_epoch}): "
                   f"{shown(result.final_metrics)}")
    typer.echo(f"classes: {', '.join(result.class_names)}")
    typer.echo(f"model: {result.model_path}")
    typer.echo(f"run folder: {result.run_dir} (metrics.csv, config.yaml, training_curves.png, "
               "confusion_matrix.png)")


def _int_list(option: str, text: str | None) -> list[int] | None:
    """Parse "3,4,6,3" (or "3x4x6x3", "3 4 6 3") into a list of ints; None stays None."""
    if text is None:
        return None
    items = text.replace("x", ",").replace(" ", ",").split(",")
    try:
        return [int(item) for item in items if item]
    except ValueError as err:
        raise typer.BadParameter(f"expected comma-separated integers such as 3,4,6,3, got {text!r}",
                                 param_hint=option) from err


@app.command()
def summary(
    input_size: Annotated[tuple[int, int, int, int] | None, typer.Option(
        help="h w d c of the network input (MATLAB inputSize; c=1 for one channel); default 224 224 64 3",
        show_default=False)] = None,
    classes: Annotated[int | None, typer.Option(
        help="number of classes (MATLAB numClasses); default 10, or the config's class names",
        show_default=False)] = None,
    config: Annotated[Path | None, typer.Option(
        help="training config YAML: take input size, classes and builder options from it")] = None,
    initial_filter_size: Annotated[str | None, typer.Option(help="InitialFilterSize: 7 or 1,7,7")] = None,
    initial_num_filters: Annotated[int | None, typer.Option(help="InitialNumFilters (default 64)")] = None,
    initial_stride: Annotated[str | None, typer.Option(help="InitialStride: 2 or 1,2,2")] = None,
    initial_pooling: Annotated[str | None, typer.Option(
        help="InitialPoolingLayer: max | average | none")] = None,
    residual_block_type: Annotated[str | None, typer.Option(
        help="ResidualBlockType: batchnorm-before-add | batchnorm-after-add")] = None,
    bottleneck_type: Annotated[str | None, typer.Option(
        help="BottleneckType: downsample-first-conv | none")] = None,
    stack_depth: Annotated[str | None, typer.Option(
        help="StackDepth, e.g. 3,4,23,3 (default 3,4,6,3)")] = None,
    num_filters: Annotated[str | None, typer.Option(
        help="NumFilters, e.g. 64,128,256,512 (one per stack)")] = None,
    normalization: Annotated[str | None, typer.Option(
        help="Normalization: zerocenter | zscore | rescale-symmetric | rescale-zero-one | none")] = None,
) -> None:
    """Print the layer table of a network, like MATLAB's analyzeNetwork(resnet3dLayers(...)).

    Built on PyTorch's meta device (shapes only): ResNet-101 at 224x224x64 takes about a second.

    Options not given keep MATLAB's defaults (or the config's values with --config).

    Example: medres3d summary --input-size 224 224 64 3 --classes 10 --stack-depth 3,4,23,3
    """

    options: dict = {}
    size: list[int] | None = list(input_size) if input_size else None
    num_classes = classes
    with _usage_errors():
        if config is not None:
            from medres3d.training.config import load_config

            train_config = load_config(config)
            options.update(train_config.model.builder_options())
            size = size or list(train_config.model.input_size)
            names = train_config.data.class_names
            num_classes = num_classes or (len(names) if names else None)
        given = {
            "initial_filter_size": _int_list("--initial-filter-size", initial_filter_size),
            "initial_num_filters": initial_num_filters,
            "initial_stride": _int_list("--initial-stride", initial_stride),
            "initial_pooling": initial_pooling,
            "residual_block_type": residual_block_type,
            "bottleneck_type": bottleneck_type,
            "stack_depth": _int_list("--stack-depth", stack_depth),
            "num_filters": _int_list("--num-filters", num_filters),
            "normalization": normalization,
        }
        # A single number means the same value on h, w and d, as in MATLAB.
        for key in ("initial_filter_size", "initial_stride"):
            if given[key] is not None and len(given[key]) == 1:
                given[key] = given[key][0]
        options.update({k: v for k, v in given.items() if v is not None})

        import torch

        from medres3d.models.analysis import analyze
        from medres3d.models.resnet3d import resnet3d

        with torch.device("meta"):
            net = resnet3d(size or [224, 224, 64, 3], num_classes or 10, **options)
        typer.echo(str(analyze(net)))


# --- inference: predict, batch, explain (owned by the inference part) ---------------------------

_AGGREGATE_HELP = ("how window probabilities combine: mean | max | logit-mean | any (detection: the scan is "
                   "negative only if every window is; docs/inference.md)")
_BACKEND_HELP = ("runs the network: torch | onnxruntime | openvino (pip install 'medres3d[onnx]' or "
                 "'medres3d[openvino]'); MODEL may be an export folder (medres3d export)")
_PRECISION_HELP = "fp32 | bf16 (default: the backend's, fp32 on the CPU); bf16: torch autocast or openvino"
_TTA_HELP = ("test-time augmentation: flip (mean over every flip of the 3 spatial axes, x8 compute), "
             "flip:0 or flip:0,1 (those axes, x2 or x4); none: off")
_NEGATIVE_CLASS_HELP = ("negative class of --aggregate any, by name or index; default the class named "
                        "normal/negative/background/healthy, else class 0")


def _display_names(scans: list[Path]) -> list[str]:
    """What tells the scans apart: their paths below the folder they share (a file's name if alone)."""
    if len(scans) == 1:
        return [scans[0].name or str(scans[0])]
    resolved = [scan.resolve() for scan in scans]
    try:
        common = Path(os.path.commonpath([p.parent for p in resolved]))
    except ValueError:  # paths on different drives
        return [str(scan) for scan in scans]
    return [p.relative_to(common).as_posix() for p in resolved]


_MEMBER_HELP = ("another model file whose probabilities are averaged with MODEL's (an ensemble, e.g. the "
                "folds of a cross-validation); repeat for more; members share classes and preprocessing")


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="model file (.safetensors)")],
    scans: Annotated[list[Path] | None, typer.Argument(help="NIfTI files, DICOM series folders, ITK images",
                                                       show_default=False)] = None,
    channels: Annotated[list[str] | None, typer.Option(
        "--channels", help="one multi-sequence scan: its files comma-separated in the model's channel order "
                           "(t1.nii.gz,t2.nii.gz,flair.nii.gz); repeat for more scans",
        show_default=False)] = None,
    json_lines: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:K")] = "auto",
    overlap: Annotated[float, typer.Option(help="sliding-window overlap in [0, 1)")] = 0.5,
    aggregate: Annotated[str, typer.Option(help=_AGGREGATE_HELP)] = "mean",
    negative_class: Annotated[str | None, typer.Option(help=_NEGATIVE_CLASS_HELP, show_default=False)] = None,
    workers: Annotated[int, typer.Option(help="loader processes (0: load in this process)")] = 0,
    backend: Annotated[str, typer.Option(help=_BACKEND_HELP)] = "torch",
    precision: Annotated[str | None, typer.Option(help=_PRECISION_HELP, show_default=False)] = None,
    tta: Annotated[str, typer.Option(help=_TTA_HELP)] = "none",
    member: Annotated[list[Path] | None, typer.Option(
        "--member", help=_MEMBER_HELP, show_default=False)] = None,
) -> None:
    """Classify scans and print a table (or JSON lines); exit code 1 if no scan could be classified.

    Example: medres3d predict model.safetensors scan1.nii.gz dicom/series2/ --json
    Example: medres3d predict model.safetensors --channels t1.nii.gz,t2.nii.gz,flair.nii.gz
    """
    import json

    from medres3d.errors import ConfigError
    from medres3d.inference.classifier import Classifier

    with _usage_errors():
        scans = [*(scans or []), *(tuple(Path(p.strip()) for p in c.split(",")) for c in channels or [])]
        if not scans:
            raise ConfigError("no scan given: name scan files or folders, or a multi-sequence scan with "
                              "--channels t1.nii.gz,t2.nii.gz")
        clf = Classifier.load([model, *member] if member else model, device=device, overlap=overlap,
                              aggregate=aggregate,
                              negative_class=negative_class, evidence=False, backend=backend,
                              precision=precision, tta=tta)
        predictions = list(clf.predict_many(scans, workers=workers))
    if json_lines:
        for scan, p in zip(scans, predictions, strict=True):
            shown = ",".join(map(str, scan)) if isinstance(scan, tuple) else str(scan)
            record = {"scan": shown, "status": p.status, "error": p.error, "label": p.label,
                      "probabilities": p.probabilities, "num_windows": p.num_windows,
                      "seconds": round(p.seconds, 3), "warnings": p.warnings}
            typer.echo(json.dumps(record))
    else:
        from rich.console import Console
        from rich.table import Table

        names = _display_names([scan[0] if isinstance(scan, tuple) else scan for scan in scans])
        table = Table(title=f"medres3d predict ({model.name}, {clf.device})",
                      caption=f"warm-up {clf.warmup_seconds or 0.0:.2f} s (imports, first forward pass), "
                              "not in any scan's seconds")
        # the scan column folds instead of cutting: the distinguishing end of a name stays visible
        table.add_column("scan", overflow="fold")
        for column in ("label", *clf.class_names, "windows", "seconds"):
            table.add_column(column, justify="left" if column == "label" else "right")
        for scan, p in zip(names, predictions, strict=True):
            if p.ok:
                probabilities = [f"{p.probabilities[name]:.3f}" for name in clf.class_names]
                table.add_row(str(scan), p.label, *probabilities, str(p.num_windows), f"{p.seconds:.2f}")
            else:
                blanks = [""] * (len(clf.class_names) + 1)
                table.add_row(str(scan), "[red]error[/red]", *blanks, f"{p.seconds:.2f}")
        console = Console()
        console.print(table)
        for scan, p in zip(names, predictions, strict=True):
            if not p.ok:
                console.print(f"[red]error[/red] {scan}: {p.error}", markup=True, highlight=False)
            for warning in p.warnings:
                console.print(f"[yellow]warning[/yellow] {scan}: {warning}", highlight=False)
    if not any(p.ok for p in predictions):
        raise typer.Exit(1)


@app.command()
def batch(
    model: Annotated[Path, typer.Argument(help="model file (.safetensors)")],
    root: Annotated[Path, typer.Argument(help="folder searched for DICOM series and NIfTI files, or a CSV "
                                             "listing the scans (path, or one column per channel of a "
                                             "multi-sequence model; optional id)")],
    out: Annotated[Path, typer.Option("--out", help="results file (docs/batch_output.md)")],
    fmt: Annotated[str | None, typer.Option("--format", help="csv | jsonl (default: by name)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="keep --out's rows, do the rest")] = False,
    workers: Annotated[int, typer.Option(help="loader processes overlapping the network")] = 2,
    scan_timeout: Annotated[float, typer.Option(
        help="seconds a loader process may spend on one scan before it is killed and the scan becomes "
             "an error row; 0: no limit; not enforced with --workers 0")] = 600.0,
    modality: Annotated[str | None, typer.Option(help="DICOM series of this modality only, e.g. CT")] = None,
    series_description: Annotated[str | None, typer.Option(
        help="DICOM series whose description matches this regex (case-insensitive)")] = None,
    min_slices: Annotated[int | None, typer.Option(help="scans with at least this many slices")] = None,
    include_localizers: Annotated[bool, typer.Option(
        "--include-localizers", help="also classify localizer/scout series")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:K")] = "auto",
    aggregate: Annotated[str, typer.Option(help=_AGGREGATE_HELP)] = "mean",
    negative_class: Annotated[str | None, typer.Option(help=_NEGATIVE_CLASS_HELP, show_default=False)] = None,
    fsync: Annotated[bool, typer.Option("--fsync", help="fsync every row (power-loss safety)")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="no progress bar")] = False,
    backend: Annotated[str, typer.Option(help=_BACKEND_HELP)] = "torch",
    precision: Annotated[str | None, typer.Option(help=_PRECISION_HELP, show_default=False)] = None,
    tta: Annotated[str, typer.Option(help=_TTA_HELP)] = "none",
    member: Annotated[list[Path] | None, typer.Option(
        "--member", help=_MEMBER_HELP, show_default=False)] = None,
) -> None:
    """Classify every image series and NIfTI file under ROOT, one row each, written as it is done.

    Exit code 0 when at least one scan is classified (error rows do not fail the batch), 1 when
    nothing could be, 2 on a usage, model or output error. Under torchrun every rank takes its
    share and rank 0 merges the parts into --out.

    Example: medres3d batch model.safetensors /data/incoming --out results.csv --modality CT --resume
    """
    from medres3d.inference.batch import run_batch

    if workers == 0 and scan_timeout:
        typer.echo("note: with --workers 0 scans load in this process: --scan-timeout is not enforced",
                   err=True)
    with _usage_errors():
        summary = run_batch(
            [model, *member] if member else model, root, out, fmt=fmt, resume=resume, workers=workers,
            scan_timeout=scan_timeout,
            device=device, modality=modality,
            series_description=series_description, min_slices=min_slices,
            include_localizers=include_localizers, fsync=fsync, progress=not no_progress,
            classifier_options={"aggregate": aggregate, "negative_class": negative_class,
                                "backend": backend, "precision": precision, "tta": tta},
        )
    if summary.rank == 0:
        typer.echo(
            f"{summary.total} scan(s) selected ({summary.excluded} excluded by the options, "
            f"{summary.skipped_files} non-image or unreadable file(s) skipped); this run: {summary.ok} ok, "
            f"{summary.errors} error(s), {summary.done_before} already done; warm-up "
            f"{summary.warmup_seconds:.1f} s (imports, first forward pass; not in the rows' seconds); "
            f"results: {summary.out}",
            err=True,
        )
    raise typer.Exit(summary.exit_code)


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help="model file (.safetensors)")],
    fmt: Annotated[str, typer.Option("--format", help="onnx | openvino | torchscript")] = "onnx",
    out: Annotated[Path, typer.Option("--out", help="export folder (created)")] = Path("medres3d-export"),
) -> None:
    """Export the network for an inference runtime, with a sidecar, and verify it against PyTorch.

    The folder holds the network (dynamic batch, input normalization inside) and
    medres3d-export.json (class names, preprocessing, window size, source model hash); predict
    and batch take the folder as MODEL with --backend onnxruntime | openvino | torch.

    Example: medres3d export model.safetensors --format openvino --out model-openvino
    """
    from medres3d.inference.export import export_model

    with _usage_errors():
        result = export_model(model, out, fmt)
    files = ", ".join(str(path) for path in result.files)
    typer.echo(f"exported {model} -> {files} ({result.format}, dynamic batch) in {result.seconds:.1f} s")
    typer.echo(f"verified: max |logit difference| {result.max_abs_difference:.2e} against PyTorch on a "
               f"probe batch of {result.probe_batch} (tolerance {result.tolerance:.0e} x max(1, |logit|))")
    typer.echo(f"sidecar: {result.sidecar}")



@app.command()
def evaluate(
    paths: Annotated[list[Path], typer.Argument(
        help="MODEL [MODEL ...] MANIFEST: one model file, or several (an ensemble averaging their "
             "probabilities), then the manifest CSV", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="output folder (metrics, predictions.csv, figures)")],
    split: Annotated[str, typer.Option(help="train | val | test | all (every row)")] = "test",
    resamples: Annotated[int, typer.Option(help="bootstrap resamples of the confidence intervals")] = 2000,
    confidence: Annotated[float, typer.Option(help="confidence level of the intervals")] = 0.95,
    seed: Annotated[int, typer.Option(help="seed of the bootstrap")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:K")] = "auto",
    workers: Annotated[int, typer.Option(help="loader processes (0: load in this process)")] = 0,
    overlap: Annotated[float, typer.Option(help="sliding-window overlap in [0, 1)")] = 0.5,
    aggregate: Annotated[str, typer.Option(help=_AGGREGATE_HELP)] = "mean",
    tta: Annotated[str, typer.Option(help=_TTA_HELP)] = "none",
) -> None:
    """Metrics of a model on a manifest split with bootstrap 95% CIs; curves and per-scan predictions.

    Scans that fail to load are listed (stderr, metrics.md, predictions.csv) and counted, not dropped.

    Example: medres3d evaluate model.safetensors data/manifest.csv --split test --out eval/
    """
    if len(paths) < 2:
        raise typer.BadParameter("give a model file (or several) and then the manifest", param_hint="PATHS")
    from medres3d.training.evaluate import evaluate as run_evaluation

    *models, manifest = paths
    with _usage_errors():
        result = run_evaluation(models[0] if len(models) == 1 else models, manifest, split=split, out_dir=out,
                                num_resamples=resamples, confidence=confidence, seed=seed, device=device,
                                workers=workers,
                                classifier_options={"overlap": overlap, "aggregate": aggregate, "tta": tta})
    for scan in result.failed:
        typer.echo(f"error: row {scan.row} {scan.path}: {scan.error}", err=True)
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(result.to_markdown())
    typer.echo(f"written to {out}: {', '.join(sorted(result.files))}")



@app.command()
def demo(
    out: Annotated[
        Path, typer.Option("--out", help="output folder (new, empty, or an earlier demo's)")
    ] = Path("medres3d-demo"),
    quick: Annotated[bool, typer.Option("--quick", help="tiny sizes: under a minute on 2 CPU cores")] = False,
    seed: Annotated[int, typer.Option("--seed", help="seed of the data and the training")] = 0,
) -> None:
    """Make phantom CT data, train a small ResNet3D, evaluate it, explain it, run a batch; print a report.

    Example: medres3d demo --out demo-out --quick
    """
    from medres3d.demo import run_demo

    with _usage_errors():
        report = run_demo(out, quick=quick, seed=seed, log=lambda line: typer.echo(line, err=True))
    typer.echo(report.summary())

@app.command()
def explain(
    model: Annotated[Path, typer.Argument(help="model file (.safetensors)")],
    scan: Annotated[Path, typer.Argument(help="NIfTI file, DICOM series folder or ITK image")],
    out: Annotated[Path, typer.Option("--out", help="heatmap NIfTI on the scan's grid and affine")],
    png: Annotated[Path | None, typer.Option("--png", help="also draw 3 orthogonal slices here")] = None,
    class_name: Annotated[str | None, typer.Option("--class", help="default: the predicted label")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:K")] = "auto",
) -> None:
    """Grad-CAM of the predicted class, saved as NIfTI in the scan's own grid (and as a PNG).

    Example: medres3d explain model.safetensors scan.nii.gz --out heatmap.nii.gz --png heatmap.png
    """
    from medres3d.inference.classifier import Classifier
    from medres3d.inference.gradcam import explain as grad_cam
    from medres3d.inference.gradcam import save_overlay_png

    with _usage_errors():
        clf = Classifier.load(model, device=device, evidence=False)
        explanation = grad_cam(clf, scan, class_name=class_name)
        explanation.save(out)
        if png is not None:
            save_overlay_png(explanation, png)
    probability = explanation.probabilities[explanation.label]
    typer.echo(f"{scan}: Grad-CAM of '{explanation.label}' (p = {probability:.3f}) at {explanation.layer}, "
               f"{explanation.num_windows} window(s) -> {out}" + (f", {png}" if png else ""))
    for warning in explanation.warnings:
        typer.echo(f"warning: {warning}", err=True)


def main() -> None:
    """Entry point of the ``medres3d`` console script."""
    app()


if __name__ == "__main__":
    main()
