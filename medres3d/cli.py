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


def main() -> None:
    """Entry point of the ``medres3d`` console script."""
    app()


if __name__ == "__main__":
    main()
