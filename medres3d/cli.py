"""The ``medres3d`` command line.

Each command imports what it needs inside its body, so ``medres3d --help`` starts instantly
(no torch, MONAI or SimpleITK at start-up).

Example:
    $ medres3d summary --input-size 224 224 64 3 --classes 10
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="medres3d",
    help="3D residual networks for CT and MRI classification.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def main() -> None:
    """Entry point of the ``medres3d`` console script."""
    app()


if __name__ == "__main__":
    main()
