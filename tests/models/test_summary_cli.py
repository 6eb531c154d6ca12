"""``medres3d summary``: the analysis table from the command line; --help stays torch-free."""

from __future__ import annotations

import subprocess
import sys

import torch
from typer.testing import CliRunner

from medres3d.cli import app
from medres3d.models.analysis import analyze
from medres3d.models.resnet3d import resnet3d

runner = CliRunner()


def header_for(*args, **options) -> str:
    with torch.device("meta"):
        return str(analyze(resnet3d(*args, **options))).splitlines()[0]


def test_summary_defaults_are_matlabs_example_network():
    result = runner.invoke(app, ["summary"])
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("ResNet-50: 177 layers, 192 connections")
    assert first == header_for((224, 224, 64, 3), 10)


def test_summary_passes_every_builder_option():
    args = ["summary", "--input-size", "48", "40", "32", "2", "--classes", "4",
            "--initial-filter-size", "1,5,5", "--initial-num-filters", "8", "--initial-stride", "1,2,2",
            "--initial-pooling", "average", "--residual-block-type", "batchnorm-after-add",
            "--bottleneck-type", "none", "--stack-depth", "2,1", "--num-filters", "8,16",
            "--normalization", "zscore"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    expected = header_for((48, 40, 32, 2), 4, initial_filter_size=(1, 5, 5), initial_num_filters=8,
                          initial_stride=(1, 2, 2), initial_pooling="average",
                          residual_block_type="batchnorm-after-add", bottleneck_type="none",
                          stack_depth=(2, 1), num_filters=(8, 16), normalization="zscore")
    assert result.output.splitlines()[0] == expected
    assert "avgpool1" in result.output and "1x5x5 conv, 8 filters, stride 1x2x2" in result.output


def test_summary_reads_the_model_section_of_a_training_config(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(
        "data:\n  manifest: manifest.csv\n  class_names: [a, b, c]\n"
        "model:\n  input_size: [32, 32, 16]\n  stack_depth: [1, 1]\n  num_filters: [4, 8]\n"
        "  initial_num_filters: 4\n  initial_stride: [1, 2, 2]\n"
    )
    result = runner.invoke(app, ["summary", "--config", str(config)])
    assert result.exit_code == 0, result.output
    expected = header_for((32, 32, 16), 3, stack_depth=(1, 1), num_filters=(4, 8), initial_num_filters=4,
                          initial_stride=(1, 2, 2))
    assert result.output.splitlines()[0] == expected


def test_summary_reports_invalid_options_as_errors():
    result = runner.invoke(app, ["summary", "--input-size", "16", "32", "32", "1"])
    assert result.exit_code == 2
    assert "input_size h=16 is too small" in result.output
    result = runner.invoke(app, ["summary", "--stack-depth", "3,four"])
    assert result.exit_code == 2 and "comma-separated integers" in result.output


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from medres3d.cli import app\n"
        "r = CliRunner().invoke(app, ['summary', '--help'])\n"
        "print(r.exit_code, 'MATLAB' in r.output, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "True", "False"]
