"""Fine-tuning: start a run from an earlier model file's weights (``model.init_from``).

:func:`load_pretrained` copies every tensor of the source model whose name and shape match the
new network; the classifier head (``fc.*``) is new whenever the class names differ (even with the
same number of classes: the outputs would mean something else). The report says which tensors
were loaded, which are new and which were skipped for a shape mismatch. The input normalization
statistics (``input.*``) are kept from the source (``model.init_normalization: keep``, the
default: the pretrained filters were trained on inputs on that scale, and refitting would shift
what the first convolution sees) or fitted again on the new training split (``refit``: for data
with another intensity distribution, e.g. another scanner or sequence).

:func:`freeze` stops the gradient of the stem (``conv1``, ``bn1``) and of the first N stacks
(``model.freeze: stem | N``); their BatchNorm layers stay in eval mode (:func:`set_train_mode`), so
their running statistics do not move either. :func:`parameter_groups` gives the loaded, trainable
parameters ``training.pretrained_lr_factor`` times the learning rate of the new ones.

Example:
    >>> from medres3d import resnet3d
    >>> net = resnet3d((16, 16, 8), 3, initial_num_filters=4, num_filters=(4, 8),
    ...                stack_depth=(1, 1))                                               # doctest: +SKIP
    >>> report = load_pretrained(net, "previous.safetensors", ["a", "b", "c"])          # doctest: +SKIP
    >>> report.new, len(report.loaded)                                                  # doctest: +SKIP
    (['fc.bias', 'fc.weight'], 58)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medres3d.errors import ConfigError

STEM = ("conv1", "bn1")
HEAD = "fc."
NORMALIZATION = "input."


@dataclass
class InitReport:
    """What :func:`load_pretrained` did.

    Attributes:
        source: the source model file.
        sha256: SHA-256 of the source file's bytes.
        source_class_names: the source's classes.
        loaded: tensors copied from the source (name order).
        new: tensors left at their fresh initialization: not in the source, the head when the
            classes differ, the normalization statistics with ``refit``.
        skipped: tensors in both whose shapes differ: name -> ``(source shape, new shape)``.
        unused: source tensors the new network has no tensor of that name for.
        normalization: ``"keep"`` or ``"refit"``.
    """

    source: str
    sha256: str
    source_class_names: list[str]
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    skipped: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    normalization: str = "keep"

    def summary(self) -> str:
        """One log line: ``init_from X (sha256 1a2b3c4d...): 58 tensors loaded, 2 new (...), 0 skipped``.

        Example:
            >>> InitReport("m.safetensors", "ab" * 32, ["a", "b"], loaded=["conv1.weight"],
            ...            new=["fc.bias"]).summary()  # doctest: +ELLIPSIS
            'init_from m.safetensors (sha256 abababab...): 1 tensor(s) loaded, 1 new (fc.bias), 0 skipped...'
        """
        skipped = ", ".join(f"{n} {tuple(a)} -> {tuple(b)}" for n, (a, b) in self.skipped.items())
        new = ", ".join(self.new) if len(self.new) <= 6 else ", ".join(self.new[:6]) + ", ..."
        return (f"init_from {self.source} (sha256 {self.sha256[:8]}...): {len(self.loaded)} tensor(s) "
                f"loaded, {len(self.new)} new ({new or 'none'}), {len(self.skipped)} skipped for a shape "
                "mismatch"
                + (f" ({skipped})" if skipped else "") + f"; normalization: {self.normalization}")

    def to_dict(self) -> dict[str, Any]:
        """The provenance entry (``training.init_from`` of the model file)."""
        return {"path": self.source, "sha256": self.sha256, "class_names": self.source_class_names,
                "loaded": self.loaded, "new": self.new,
                "skipped": {k: [list(a), list(b)] for k, (a, b) in self.skipped.items()},
                "unused": self.unused, "normalization": self.normalization}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks.

    Example:
        >>> file_sha256("model.safetensors")   # doctest: +SKIP
        '3f5a...'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_pretrained(net: nn.Module, source: str | os.PathLike[str], class_names: list[str], *,
                    normalization: str = "keep") -> InitReport:
    """Copy the source model's tensors that match ``net`` by name and shape into ``net``.

    Args:
        net: the freshly built network (its other tensors keep their initialization).
        source: a medres3d model file (``.safetensors``).
        class_names: the new run's classes; the head is loaded only when they equal the source's.
        normalization: ``"keep"`` the source's input statistics, or ``"refit"`` them (left unfitted here).

    Raises:
        ModelFileError: the source is missing or not a valid model file (naming it).
        ConfigError: no tensor besides the head matches (a different architecture), or ``keep``
            while the source's statistics are unfitted or of another channel count (naming the file).
    """
    from medres3d.modelfile import read_model

    if normalization not in ("keep", "refit"):
        raise ConfigError(f"model.init_normalization must be 'keep' or 'refit', got {normalization!r}")
    path = Path(source)
    model = read_model(path)
    theirs = model.net.state_dict()
    ours = net.state_dict()
    report = InitReport(str(path), file_sha256(path), list(model.class_names), normalization=normalization)
    same_classes = list(model.class_names) == list(class_names)
    update = {}
    for name, tensor in ours.items():
        other = theirs.get(name)
        fresh = (name.startswith(HEAD) and not same_classes) or (
            name.startswith(NORMALIZATION) and normalization == "refit")
        if other is None or fresh:
            report.new.append(name)
        elif other.shape != tensor.shape:
            report.skipped[name] = (list(other.shape), list(tensor.shape))
        else:
            update[name] = other
            report.loaded.append(name)
    report.unused = sorted(set(theirs) - set(ours))
    # counters (BatchNorm's num_batches_tracked) match any network: only a real tensor shows a match
    if not any(update[n].ndim > 0 and not n.startswith((HEAD, NORMALIZATION)) for n in report.loaded):
        raise ConfigError(f"model.init_from {path}: no layer of the network matches the source by name and "
                          f"shape ({len(report.skipped)} skipped for a shape mismatch, {len(report.unused)} "
                          "source tensors unused): is it a medres3d model of this architecture?")
    if normalization == "keep" and getattr(net, "config", None) is not None \
            and net.config.normalization != "none":
        missing = [n for n in ours if n.startswith(NORMALIZATION) and n not in update]
        if missing or not bool(theirs.get(NORMALIZATION + "fitted", torch.tensor(False))):
            state = f"of another shape: {missing}" if missing else "unfitted"
            raise ConfigError(
                f"model.init_from {path}: model.init_normalization 'keep' needs the source's fitted input "
                f"statistics, but they are {state}; set model.init_normalization: refit")
    net.load_state_dict(update, strict=False)
    return report


def frozen_prefixes(net: nn.Module, freeze: str | int | None) -> list[str]:
    """Module names that ``model.freeze`` covers: ``stem`` the stem, N the stem and stacks 1..N.

    Raises:
        ConfigError: N larger than the network's number of stacks (naming both).

    Example:
        >>> from medres3d import resnet3d
        >>> net = resnet3d((16, 16, 8), 2, initial_num_filters=4, num_filters=(4, 8), stack_depth=(1, 1))
        >>> frozen_prefixes(net, 1)
        ['conv1', 'bn1', 'stack1']
    """
    if freeze is None:
        return []
    stacks = len(net.config.stack_depth)
    count = 0 if freeze == "stem" else int(freeze)
    if count > stacks:
        raise ConfigError(f"model.freeze {freeze!r}: the network has only {stacks} stack(s) "
                          f"(stack_depth {list(net.config.stack_depth)})")
    return [*STEM, *(f"stack{s}" for s in range(1, count + 1))]


def freeze(net: nn.Module, prefixes: list[str], report: InitReport) -> list[nn.Module]:
    """Stop the gradient of the modules named by ``prefixes``; returns them (see :func:`set_train_mode`).

    Raises:
        ConfigError: a frozen tensor was not loaded from the source (freezing random weights).
    """
    modules = [net.get_submodule(p) for p in prefixes]
    loaded = set(report.loaded)
    names = [f"{p}.{n}" for p, m in zip(prefixes, modules, strict=True) for n in m.state_dict()]
    unloaded = [n for n in names if n not in loaded]
    if unloaded:
        raise ConfigError(f"model.freeze: {unloaded[:4]} {'...' if len(unloaded) > 4 else ''}were not loaded "
                          f"from {report.source} (new or shape mismatch); freeze fewer stacks")
    for module in modules:
        module.requires_grad_(False)
    return modules


def set_train_mode(module: nn.Module, frozen: list[nn.Module]) -> None:
    """``module.train()``, but frozen modules stay in eval mode (their BatchNorm statistics fixed)."""
    module.train()
    for part in frozen:
        part.eval()


def parameter_groups(net: nn.Module, report: InitReport | None, lr: float, factor: float
                     ) -> list[dict[str, Any]]:
    """Optimizer groups of the trainable parameters: new ones at ``lr``, loaded ones at ``lr * factor``.

    The new layers' group comes first (``metrics.csv``'s ``lr`` is its rate); empty groups are left out.

    Example:
        >>> groups = parameter_groups(torch.nn.Linear(2, 2), None, 0.01, 0.1)
        >>> [g["lr"] for g in groups]
        [0.01]
    """
    loaded = set() if report is None else set(report.loaded)
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    new = [p for n, p in trainable if n not in loaded]
    pretrained = [p for n, p in trainable if n in loaded]
    groups = [{"params": new, "lr": lr}, {"params": pretrained, "lr": lr * factor}]
    return [g for g in groups if g["params"]]
