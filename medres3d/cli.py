"""The ``medres3d`` command line.

Each command imports what it needs inside its body, so ``medres3d --help`` starts instantly
(no torch, MONAI or SimpleITK at start-up).

Example:
    $ medres3d summary --input-size 224 224 64 3 --classes 10
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

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
    no_progress: Annotated[bool, typer.Option("--no-progress", help="no progress bar (logs, CI)")] = False,
) -> None:
    """Train a network from a YAML config; under torchrun, data-parallel over all processes.

    Writes model.safetensors, metrics.csv, config.yaml (resolved), training_curves.png and
    confusion_matrix.png to the config's output_dir.

    Example: torchrun --nproc_per_node 4 -m medres3d.cli train sample_configs/ct_resnet18_hu_window.yaml
    """
    from medres3d.config import load_config
    from medres3d.errors import MedRes3DError
    from medres3d.training import Trainer

    try:
        result = Trainer(load_config(config), resume=resume, progress=not no_progress).fit()
    except MedRes3DError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    if os.environ.get("RANK", "0") != "0":
        return
    final = result.final_metrics
    shown = ", ".join(f"{k} {v:.4f}" for k, v in final.items() if v is not None) or "no validation data"
    stop = " (early stopping)" if result.stopped_early else ""
    typer.echo(f"trained {result.epochs_run} epoch(s){stop}; best epoch {result.best_epoch}; {shown}")
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
    from medres3d.errors import MedRes3DError

    options: dict = {}
    size: list[int] | None = list(input_size) if input_size else None
    num_classes = classes
    try:
        if config is not None:
            from medres3d.config import load_config

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
    except MedRes3DError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err


def main() -> None:
    """Entry point of the ``medres3d`` console script."""
    app()


if __name__ == "__main__":
    main()
