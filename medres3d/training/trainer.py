"""Training a ResNet3D from a :class:`~medres3d.training.config.TrainConfig`, on one process or torchrun.

What a run does, in order:

1. Reads and checks the manifest (every row: columns, labels, files), splits it, prints the rows
   per class and split, and refuses labels that look like typos of another label
   (:func:`medres3d.training.manifest.check_label_typos`) unless ``data.class_names`` lists the classes.
2. One pass over every row, sharded over ranks: loads and preprocesses each scan (filling the
   cache), collects the rows that fail to load, and, unless resuming, fits the network's input
   normalization on the training split, as MATLAB does at training time: after preprocessing,
   before augmentation, over each training volume as prepared for the network (padded to at
   least the input size; with ``patches`` the whole volume, i.e. the union of the windows the
   network can see; without, the volume is exactly the input size). Any bad row stops the run
   here with one :class:`~medres3d.errors.ManifestError` listing them all.
3. Epochs: shuffled (seeded per epoch, so a resumed run draws the same batches), augmented,
   optionally AMP and gradient clipping; validation each epoch (sliding windows over the whole
   volume with ``patches``, exactly what inference does); metrics to ``metrics.csv`` and one
   line on stderr; a resume checkpoint; early stopping on the monitored metric.
4. The best (or last) weights, optionally MATLAB-style "population" BatchNorm statistics,
   ``model.safetensors`` with provenance, ``config.yaml``, and two PNG figures.

Under ``torchrun`` each rank trains on a :class:`~torch.utils.data.DistributedSampler` shard with
DistributedDataParallel; statistics are all-reduced, BatchNorm running statistics are averaged
over ranks after every epoch, validation is sharded and gathered, and only rank 0 writes files.

Example:
    >>> from medres3d.training.config import load_config
    >>> result = Trainer(load_config("sample_configs/tiny.yaml")).fit()   # doctest: +SKIP
    >>> result.model_path, result.final_metrics["val_accuracy"]          # doctest: +SKIP
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import platform
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medres3d._atomic import write_atomically
from medres3d._progress import progress_bar
from medres3d.errors import ConfigError, ManifestError, ModelFileError
from medres3d.training import checkpoint as ckpt
from medres3d.training import datasets, finetune, manifest, tracking
from medres3d.training import distributed as mdist
from medres3d.training.config import TrainConfig
from medres3d.training.metrics import classification_metrics, confusion_matrix

METRIC_COLUMNS = ("epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                  "val_balanced_accuracy", "val_auc", "seconds")
_LOWER_IS_BETTER = {"val_loss"}


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns (the same on every rank).

    Attributes:
        run_dir: the output folder.
        model_path: ``model.safetensors``, or None when the run stopped at ``until_epoch``.
        completed: False when :meth:`Trainer.fit` stopped at ``until_epoch`` (resume to continue).
        epochs_run: epochs trained in total (including before a resume).
        best_epoch: epoch of the best monitored metric (None without validation data).
        stopped_early: True when early stopping ended the run.
        history: one dict per epoch, the rows of ``metrics.csv``.
        final_metrics: validation metrics of the saved weights, measured again after training
            (after the BatchNorm re-estimation with ``population_bn_stats``, so they can differ
            from the logged ones).
        class_names: output order of the network.
        weights_sha256: hash of the final state_dict (identical on every rank).
        best_metrics: the validation metrics logged at ``best_epoch`` (its row of ``metrics.csv``);
            empty without validation data.
        saved_epoch: the epoch whose weights the model file holds (``best_epoch`` with
            ``output_network: best`` and validation data, else the last epoch); None when not completed.
        class_counts: rows per class of each split, ``{"train": {name: n}, "val": {name: n}}``.
    """

    run_dir: Path
    model_path: Path | None
    completed: bool
    epochs_run: int
    best_epoch: int | None
    stopped_early: bool
    history: list[dict[str, Any]]
    final_metrics: dict[str, float | None] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    weights_sha256: str = ""
    best_metrics: dict[str, float | None] = field(default_factory=dict)
    saved_epoch: int | None = None
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class _Data:
    class_names: list[str]
    train: Any  # dataset of training windows (random part applied)
    train_base: Any  # cached, deterministic training volumes
    val_base: Any
    train_rows: list[manifest.ManifestRow]
    val_rows: list[manifest.ManifestRow]
    data_hash: str

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Rows per class (every class, in output order) of each split."""
        return {split: {name: sum(r.label == name for r in rows) for name in self.class_names}
                for split, rows in (("train", self.train_rows), ("val", self.val_rows))}


def _seed(*parts: int) -> int:
    """A 31-bit seed derived from several integers (epoch, rank...) without collisions in practice."""
    return int(np.random.SeedSequence([abs(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 over every state_dict entry (name, dtype, shape, bytes), in name order.

    Example:
        >>> len(weights_sha256(torch.nn.Linear(2, 2)))
        64
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


@dataclass
class RunState:
    """The loop state of a run that a resume needs: the epochs' rows and early stopping's bookkeeping.

    Stored in the checkpoint under the same keys as its fields (:meth:`to_checkpoint`).

    Example:
        >>> RunState().to_checkpoint()["epoch"]
        0
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0  # the last epoch run
    best_metric: float | None = None
    best_epoch: int | None = None
    best_state: dict[str, torch.Tensor] | None = None  # the best epoch's weights, on the CPU
    bad_epochs: int = 0  # epochs since the monitored metric last improved
    stopped_early: bool = False

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> RunState:
        """The loop state saved in a checkpoint dict."""
        return cls(history=list(state["history"]), epoch=int(state["epoch"]),
                   best_metric=state["best_metric"], best_epoch=state["best_epoch"],
                   best_state=state["best_state"], bad_epochs=state["bad_epochs"],
                   stopped_early=bool(state["stopped_early"]))  # fmt: skip

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint entries of this state."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def record(self, row: dict[str, Any], net: nn.Module, stopping: Any) -> None:
        """Add one epoch's ``row``; keep the weights when the monitored metric improved."""
        self.history.append(row)
        self.epoch = row["epoch"]
        value = row.get(stopping.metric)
        if value is not None and _improved(value, self.best_metric, stopping.metric, stopping.min_delta):
            self.best_metric, self.best_epoch, self.bad_epochs = value, self.epoch, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        else:
            self.bad_epochs += 1
        self.stopped_early = stopping.patience is not None and self.bad_epochs >= stopping.patience


class Trainer:
    """Train a network as a :class:`~medres3d.training.config.TrainConfig` describes (see the module doc).

    Rank 0 writes the rows per class and split, then one line per epoch, to stderr: plain lines
    (no bar, no wrapping) unless stderr is a terminal and ``progress`` is on, where they print
    above a Rich progress bar.

    Args:
        config: the validated configuration (:func:`medres3d.training.config.load_config`).
        resume: continue from ``output_dir/checkpoint.pt`` if it exists.
        progress: show a Rich progress bar when stderr is a terminal.
        verbose: write the class counts and epoch lines (False: silent).
        split: (train rows, validation rows) to use instead of the manifest's own split (a
            cross-validation fold, :mod:`medres3d.training.cv`); rows of ``data.manifest``.

    Example:
        >>> trainer = Trainer(load_config("sample_configs/tiny.yaml"))   # doctest: +SKIP
        >>> trainer.fit().history[-1]["val_accuracy"]                     # doctest: +SKIP
    """

    def __init__(self, config: TrainConfig, *, resume: bool = False, progress: bool = True,
                 verbose: bool = True,
                 split: tuple[Sequence[manifest.ManifestRow], Sequence[manifest.ManifestRow]] | None = None
                 ) -> None:
        if not isinstance(config, TrainConfig):
            raise ConfigError(f"Trainer needs a TrainConfig, got {type(config).__name__}; use load_config()")
        self.config = config
        self.resume = resume
        self.progress = progress
        self.verbose = verbose
        self.split = None if split is None else (list(split[0]), list(split[1]))
        self.run_dir = Path(config.output_dir)
        self._bar: Any = None  # the Rich progress bar while one is shown
        self._init: finetune.InitReport | None = None  # what model.init_from loaded
        self._frozen: list[nn.Module] = []  # modules model.freeze froze (kept in eval mode)

    def _log(self, ctx: mdist.DistContext, text: str) -> None:
        """One message of rank 0 on stderr, above the progress bar when one is shown."""
        if not (self.verbose and ctx.is_main):
            return
        if self._bar is not None:
            self._bar.console.print(text, soft_wrap=True, markup=False, highlight=False)
        else:
            # plain print: a Rich console would wrap log lines at 80 columns when not on a terminal
            print(text, file=sys.stderr, flush=True)

    # -- setup -----------------------------------------------------------------------------------

    def _spec(self) -> Any:
        from medres3d.transforms import PreprocessingSpec

        pre = self.config.preprocessing
        try:
            spec = PreprocessingSpec.preset(pre.preset, **pre.overrides, channels=self.config.data.channels)
        except (ConfigError, TypeError) as err:
            raise ConfigError(f"preprocessing: {err}") from err
        size = list(self.config.model.spatial_size)
        current = None if spec.spatial_size is None else list(spec.spatial_size)
        if self.config.training.patches or current == size:
            return spec
        if current is not None:
            raise ConfigError(
                f"preprocessing spatial_size {current} differs from model input_size {size}: set "
                "training.patches: true to train on windows of larger volumes, or make them equal")
        # Without patches every volume is cropped/padded to the input size by the spec itself, which
        # is saved in the model file: inference then prepares scans exactly as training did.
        return PreprocessingSpec.from_dict({**spec.to_dict(), "spatial_size": size})

    def _network(self, num_classes: int) -> nn.Module:
        from medres3d.models.resnet3d import resnet3d

        model = self.config.model
        try:
            return resnet3d(model.input_size, num_classes, **model.builder_options())
        except ConfigError as err:
            raise ConfigError(f"model: {err}") from err

    def _data(self, spec: Any, ctx: mdist.DistContext) -> _Data:
        cfg = self.config
        manifest_path = cfg.data.manifest
        rows = manifest.read_manifest(manifest_path, cfg.data.channels)
        names = manifest.class_names_of(rows, cfg.data.class_names, manifest_path)
        if self.split is None:
            train_rows, val_rows = manifest.split_rows(rows, cfg.data.val_fraction, cfg.training.seed)
        else:
            train_rows, val_rows = self.split
        # Shown before any refusal: the table is what tells a typo from a real rare class.
        self._log(ctx, manifest.split_table(manifest_path, names, {"train": train_rows, "val": val_rows}))
        if cfg.data.class_names is None:
            manifest.check_label_typos(rows, manifest_path)
        weights = cfg.training.class_weights
        if isinstance(weights, list) and len(weights) != len(names):
            raise ConfigError(f"training.class_weights has {len(weights)} entries for {len(names)} "
                              f"classes {names}")
        if not train_rows:
            raise ManifestError(manifest_path, "no training rows (split column has no 'train' rows)")
        used = train_rows + val_rows
        stamps = manifest.check_files(used, manifest_path)
        size = cfg.model.spatial_size
        prepare = datasets.prepare_transform(spec, size)
        cache_dir = self.run_dir / "cache" / datasets.cache_key(spec, size)
        if cfg.data.cache == "disk" and ctx.is_main:
            cache_dir.mkdir(parents=True, exist_ok=True)
        mdist.barrier(ctx)
        train_base = datasets.cached_dataset(datasets.items_of(train_rows, names, stamps), prepare,
                                          cfg.data.cache, cache_dir, cfg.data.num_workers)
        val_base = datasets.cached_dataset(datasets.items_of(val_rows, names, stamps), prepare,
                                        cfg.data.cache, cache_dir, cfg.data.num_workers)
        augment = datasets.random_transform(size, patches=cfg.training.patches,
                                         augmentation=cfg.training.augmentation)
        return _Data(names, datasets.with_random(train_base, augment), train_base, val_base,
                     train_rows, val_rows, manifest.data_hash(used, stamps))

    def _first_pass(self, net: nn.Module, data: _Data, ctx: mdist.DistContext, fit: bool) -> None:
        """Load every row once (sharded): collect load failures, fit the input normalization."""
        from medres3d.models.normalization import fit_normalization

        problems: list[tuple[int, str]] = []
        channels = net.in_channels

        def check(item: dict[str, Any]) -> torch.Tensor | None:
            if "error" in item:
                problems.append((item["row"], f"row {item['row']}: {item['error']}"))
                return None
            image = torch.as_tensor(item["image"])
            if image.ndim != 4 or image.shape[0] != channels:
                problems.append((item["row"], f"row {item['row']}: preprocessed to shape "
                                              f"{tuple(image.shape)}, but the model input_size needs "
                                              f"({channels}, H, W, D)"))
                return None
            return image

        def training_images() -> Iterator[torch.Tensor]:
            for index in range(ctx.rank, len(data.train_base), ctx.world_size):
                image = check(data.train_base[index])
                if image is not None:
                    yield image[None]
            for index in range(ctx.rank, len(data.val_base), ctx.world_size):
                check(data.val_base[index])

        fit_error = None
        if fit and net.config.normalization != "none":
            try:
                fit_normalization(net, training_images(), distributed=ctx.enabled)
            except ConfigError as err:  # e.g. no training scan loaded: the bad rows are the real news
                fit_error = err
        else:
            for _ in training_images():
                pass
        gathered = sorted(p for rank_problems in mdist.all_gather(ctx, problems) for p in rank_problems)
        if gathered:
            messages = [m for _, m in gathered]
            raise ManifestError(self.config.data.manifest, manifest.summarize_problems(messages))
        if fit_error is not None:
            raise fit_error

    def _init_from(self, net: nn.Module, class_names: list[str], ctx: mdist.DistContext) -> None:
        """Fine-tuning: load ``model.init_from``'s matching layers, freeze ``model.freeze``."""
        model = self.config.model
        self._init, self._frozen = None, []
        if model.init_from is None:
            return
        self._init = finetune.load_pretrained(net, model.init_from, class_names,
                                              normalization=model.init_normalization)
        prefixes = finetune.frozen_prefixes(net, model.freeze)
        self._frozen = finetune.freeze(net, prefixes, self._init)
        self._log(ctx, self._init.summary() + (f"; frozen: {', '.join(prefixes)}" if prefixes else ""))

    def _optimization(self, net: nn.Module) -> tuple[Any, Any]:
        t = self.config.training
        groups = finetune.parameter_groups(net, self._init, t.lr, t.pretrained_lr_factor)
        if t.optimizer == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
        else:
            optimizer = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        if t.schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs)
        elif t.schedule == "step":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=t.step_size, gamma=t.gamma)
        else:
            scheduler = None
        return optimizer, scheduler

    def _class_weights(self, data: _Data) -> torch.Tensor | None:
        weights = self.config.training.class_weights
        if weights is None:
            return None
        if isinstance(weights, list):
            return torch.tensor(weights, dtype=torch.float32)
        counts = np.bincount([data.class_names.index(r.label) for r in data.train_rows],
                             minlength=len(data.class_names))
        if (counts == 0).any():
            empty = [n for n, c in zip(data.class_names, counts, strict=True) if c == 0]
            raise ManifestError(self.config.data.manifest,
                                f"class_weights 'auto' needs training rows of every class; none for {empty}")
        return torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)

    def _autocast(self, device: torch.device) -> Any:
        from medres3d.runtime import autocast

        try:
            return autocast(self.config.training.amp, device)
        except ConfigError as err:
            raise ConfigError(f"training.{err}") from err

    # -- epochs ----------------------------------------------------------------------------------

    def _train_loader(self, dataset: Any, ctx: mdist.DistContext, epoch: int) -> Any:
        from monai.data import DataLoader
        from torch.utils.data import DistributedSampler, RandomSampler

        t = self.config.training
        generator = torch.Generator().manual_seed(_seed(t.seed, epoch, ctx.rank))
        if ctx.enabled:
            sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=t.seed)
            sampler.set_epoch(epoch)
            per_rank = len(sampler)
        else:
            sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(_seed(t.seed, epoch)))
            per_rank = len(dataset)
        # A last batch of one sample would make BatchNorm fail on 1x1x1 feature maps.
        drop_last = per_rank > t.batch_size and per_rank % t.batch_size == 1
        return DataLoader(dataset, batch_size=t.batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=self.config.data.num_workers, generator=generator,
                          pin_memory=ctx.device.type == "cuda")

    def _train_epoch(self, model: nn.Module, loader: Any, optimizer: Any, scaler: Any, criterion: nn.Module,
                     ctx: mdist.DistContext, progress: Any) -> tuple[float, float]:
        t = self.config.training
        finetune.set_train_mode(model, self._frozen)
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
        task = progress.add_task("train", total=len(loader)) if progress is not None else None
        for batch in loader:
            x = torch.as_tensor(batch["image"]).to(ctx.device, non_blocking=True).float()
            y = torch.as_tensor(batch["label"]).to(ctx.device, non_blocking=True).long()
            with self._autocast(ctx.device):
                logits = model(x)
            loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if t.grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            totals += torch.tensor([loss.item() * len(y), (logits.argmax(1) == y).sum().item(), len(y)],
                                   dtype=torch.float64)
            if task is not None:
                progress.update(task, advance=1, description=f"train loss {loss.item():.4f}")
        if task is not None:
            progress.remove_task(task)
        totals = mdist.all_reduce_sum(ctx, totals)
        return float(totals[0] / totals[2]), float(totals[1] / totals[2])

    def _predict(self, module: nn.Module, base: Any, spec: Any, ctx: mdist.DistContext
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities and labels of every validation volume (gathered from all ranks)."""
        from medres3d.inference.sliding_window import sliding_window_classify

        t = self.config.training
        module.eval()
        results: list[tuple[int, list[float], int]] = []
        for index in range(ctx.rank, len(base), ctx.world_size):
            item = base[index]
            image = torch.as_tensor(item["image"]).float()
            if t.patches:
                probs = sliding_window_classify(image, module, batch_size=t.batch_size,
                                                amp=False if t.amp == "none" else t.amp,
                                                background_value=float(spec.background_value),
                                                device=ctx.device).probabilities
            else:
                with torch.inference_mode(), self._autocast(ctx.device):
                    probs = torch.softmax(module(image[None].to(ctx.device)).float(), dim=1)[0].cpu()
            results.append((index, probs.tolist(), int(item["label"])))
        gathered = sorted(r for part in mdist.all_gather(ctx, results) for r in part)
        if not gathered:
            return np.zeros((0, module.num_classes)), np.zeros(0, dtype=np.int64)
        return (np.array([r[1] for r in gathered], dtype=np.float64),
                np.array([r[2] for r in gathered], dtype=np.int64))

    def _validate(self, module: nn.Module, data: _Data, spec: Any, ctx: mdist.DistContext
                  ) -> tuple[dict[str, float | None], np.ndarray | None]:
        if len(data.val_base) == 0:
            return dict.fromkeys(("val_loss", "val_accuracy", "val_balanced_accuracy", "val_auc")), None
        probs, labels = self._predict(module, data.val_base, spec, ctx)
        picked = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
        scores = classification_metrics(labels, probs)
        counts = confusion_matrix(labels, probs.argmax(axis=1), len(data.class_names))
        metrics = {"val_loss": float(-np.log(picked).mean()), "val_accuracy": scores["accuracy"],
                   "val_balanced_accuracy": scores["balanced_accuracy"], "val_auc": scores["auc"]}
        return {k: (None if v is None or math.isnan(v) else v) for k, v in metrics.items()}, counts

    def _average_buffers(self, module: nn.Module, ctx: mdist.DistContext) -> None:
        """Make BatchNorm running statistics identical on all ranks (their mean over ranks)."""
        if not ctx.enabled:
            return
        # BatchNorm only: the input statistics are identical already, and (3 * x) / 3 != x in float32.
        frozen = {id(m) for part in self._frozen for m in part.modules()}
        for norm in module.modules():
            if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.track_running_stats \
                    and id(norm) not in frozen:
                for buffer in (norm.running_mean, norm.running_var):
                    buffer.copy_(mdist.all_reduce_sum(ctx, buffer.detach().clone()) / ctx.world_size)

    @torch.no_grad()
    def _population_bn(self, module: nn.Module, data: _Data, ctx: mdist.DistContext) -> None:
        """MATLAB's "population" statistics: one pass in train mode, cumulative averages, no updates."""
        from monai.data import DataLoader
        from torch.utils.data import Subset

        t = self.config.training
        frozen = {id(m) for part in self._frozen for m in part.modules()}
        norms = [m for m in module.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in frozen]
        if not norms:
            return
        saved = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the pass
        crop = datasets.random_transform(self.config.model.spatial_size, patches=t.patches, augmentation=None)
        shard = Subset(datasets.with_random(data.train_base, crop), range(ctx.rank, len(data.train_base),
                                                                        ctx.world_size))
        drop_last = len(shard) > t.batch_size and len(shard) % t.batch_size == 1
        loader = DataLoader(shard, batch_size=t.batch_size, shuffle=False, drop_last=drop_last,
                            generator=torch.Generator().manual_seed(_seed(t.seed, 7919, ctx.rank)))
        finetune.set_train_mode(module, self._frozen)
        for batch in loader:
            with self._autocast(ctx.device):
                module(torch.as_tensor(batch["image"]).to(ctx.device).float())
        module.eval()
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
            if ctx.enabled:  # weight each rank's averages by its number of batches
                n = m.num_batches_tracked.to(torch.float64)
                total = mdist.all_reduce_sum(ctx, n.clone())
                for stat in (m.running_mean, m.running_var):
                    stat.copy_(mdist.all_reduce_sum(ctx, stat.to(torch.float64) * n) / total)
                m.num_batches_tracked.copy_(total.long())

    # -- the run ---------------------------------------------------------------------------------

    def fit(self, until_epoch: int | None = None) -> TrainResult:
        """Run (or resume) training; returns a :class:`TrainResult`.

        Args:
            until_epoch: stop after this epoch with a checkpoint but no model file, e.g. to split a
                long run into time-limited jobs; the next ``Trainer(..., resume=True).fit()``
                continues exactly (same batches, same augmentation).
        """
        ctx = mdist.setup(self.config.training.device)
        try:
            result = self._fit(ctx, until_epoch)
        except BaseException:
            # No barrier: a rank that failed alone would leave the others waiting in it forever.
            mdist.teardown(ctx, wait=False)
            raise
        mdist.teardown(ctx)
        return result

    def _fit(self, ctx: mdist.DistContext, until_epoch: int | None) -> TrainResult:
        t = self.config.training
        _make_deterministic(t.seed, t.deterministic, ctx)
        self._autocast(ctx.device)  # an impossible amp setting fails now, not after loading the data
        spec = self._spec()
        if self.config.logging == "tensorboard":
            tracking.require_tensorboard()  # a missing package fails now, not after loading the data
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        data = self._data(spec, ctx)
        torch.manual_seed(t.seed)  # the same initial weights on every rank (DDP also broadcasts them)
        net = self._network(len(data.class_names))
        has_val = len(data.val_rows) > 0
        if t.early_stopping.patience is not None and not has_val:
            raise ConfigError("training.early_stopping needs validation rows (data.val_fraction > 0 or "
                              "'val' rows in the split column)")
        checkpoint_path = self.run_dir / "checkpoint.pt"
        state = ckpt.load_checkpoint(checkpoint_path) if self.resume and checkpoint_path.exists() else None
        self._init_from(net, data.class_names, ctx)
        refit = self._init is None or self._init.normalization == "refit"
        self._first_pass(net, data, ctx, fit=state is None and refit)
        if state is not None:
            _check_compatible(state, net, data.class_names, checkpoint_path)
            net.load_state_dict(state["model"])
        net.to(ctx.device)
        model: nn.Module = net
        if ctx.enabled:
            model = nn.parallel.DistributedDataParallel(
                net, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
        optimizer, scheduler = self._optimization(net)
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=t.amp == "fp16")
        weights = self._class_weights(data)
        criterion = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(ctx.device))

        run = RunState()
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state["scheduler"] is not None:
                scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            run = RunState.from_checkpoint(state)
            ckpt.set_rng_state(state["rng"])

        start = run.epoch
        writer = None
        if self.config.logging == "tensorboard" and ctx.is_main:
            writer = tracking.open_tensorboard(self.run_dir, purge_step=start + 1)
        last = t.epochs if until_epoch is None else min(t.epochs, until_epoch)
        if run.stopped_early:  # resuming a run that early stopping ended: only the final steps remain
            last = start
        with progress_bar(self.progress and self.verbose and ctx.is_main, transient=True) as progress:
            self._bar = progress
            for epoch in range(start + 1, last + 1):
                began = time.perf_counter()
                loader = self._train_loader(data.train, ctx, epoch)
                lr = optimizer.param_groups[0]["lr"]
                train_loss, train_acc = self._train_epoch(model, loader, optimizer, scaler, criterion, ctx,
                                                          progress)
                if scheduler is not None:
                    scheduler.step()
                self._average_buffers(net, ctx)
                val, _ = self._validate(net, data, spec, ctx)
                row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "train_accuracy": train_acc, **val,
                       "seconds": round(time.perf_counter() - began, 3)}
                run.record(row, net, t.early_stopping)
                if ctx.is_main:
                    _write_metrics(self.run_dir / "metrics.csv", run.history)
                    if writer is not None:
                        tracking.log_epoch(writer, row)
                    ckpt.save_checkpoint(checkpoint_path, {
                        **run.to_checkpoint(), "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": None if scheduler is None else scheduler.state_dict(),
                        "scaler": scaler.state_dict(), "class_names": data.class_names,
                        "model_config": net.config.to_dict(), "rng": ckpt.rng_state()})
                    self._log(ctx, _epoch_line(row, t.epochs))
                mdist.barrier(ctx)
                if run.stopped_early:
                    break
        self._bar = None
        if writer is not None:
            writer.close()

        if not run.stopped_early and run.epoch < t.epochs:
            return TrainResult(self.run_dir, None, False, run.epoch, run.best_epoch, False, run.history,
                               class_names=data.class_names, weights_sha256=weights_sha256(net),
                               best_metrics=_logged_metrics(run.history, run.best_epoch),
                               class_counts=data.class_counts())
        return self._finish(net, data, spec, ctx, run)

    def _calibrate(self, net: nn.Module, data: _Data, spec: Any, ctx: mdist.DistContext
                   ) -> dict[str, Any] | None:
        """Temperature scaling of the final weights on the validation split, or why there is none."""
        from medres3d.training.calibration import auto_refusal, fit_temperature

        mode = self.config.training.calibration
        if mode == "none":
            return None
        if len(data.val_base) == 0:
            return {"method": "none", "reason": "no validation rows to fit a temperature on"}
        probs, labels = self._predict(net, data.val_base, spec, ctx)
        fit = fit_temperature(probs, labels)
        refusal = auto_refusal(fit) if mode == "auto" else None
        if refusal is not None:
            self._log(ctx, f"calibration: none ({refusal})")
            return {**fit.to_dict(), "method": "none", "reason": refusal}
        self._log(ctx, f"calibration: temperature {fit.temperature:.3f} (validation NLL {fit.nll_before:.4f} "
                       f"-> {fit.nll_after:.4f}, {fit.num_scans} scans)")
        return fit.to_dict()

    def _finish(self, net: nn.Module, data: _Data, spec: Any, ctx: mdist.DistContext, run: RunState
                ) -> TrainResult:
        from medres3d import __version__
        from medres3d.modelfile import save_model
        from medres3d.training.plots import plot_confusion_matrix, plot_training_curves

        cfg, t = self.config, self.config.training
        history, best_epoch, stopped_early = run.history, run.best_epoch, run.stopped_early
        saved_epoch = run.epoch
        if t.output_network == "best" and run.best_state is not None:
            net.load_state_dict(run.best_state)
            saved_epoch = best_epoch
        if t.population_bn_stats:
            self._population_bn(net, data, ctx)
        final, counts = self._validate(net, data, spec, ctx)
        calibration = self._calibrate(net, data, spec, ctx)
        digests = mdist.all_gather(ctx, weights_sha256(net))
        result = TrainResult(self.run_dir, None, True, run.epoch, best_epoch, stopped_early,
                             history, final, data.class_names, digests[0],
                             best_metrics=_logged_metrics(history, best_epoch), saved_epoch=saved_epoch,
                             class_counts=data.class_counts())
        if ctx.is_main:
            import monai

            resolved = cfg.model_copy(deep=True)
            resolved.data.class_names = data.class_names
            options = net.config.to_dict()
            resolved.model = type(cfg.model)(**{k: v for k, v in options.items() if k != "num_classes"},
                                             **cfg.model.fine_tuning())
            training = {
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "data_sha256": data.data_hash, "manifest": str(cfg.data.manifest),
                "num_train": len(data.train_rows), "num_val": len(data.val_rows),
                "epochs_run": result.epochs_run, "epochs_planned": t.epochs, "best_epoch": best_epoch,
                "stopped_early": stopped_early, "output_network": t.output_network,
                "population_bn_stats": t.population_bn_stats, "final_metrics": final, "history": history,
                "calibration": calibration,
                "init_from": None if self._init is None else {
                    **self._init.to_dict(), "freeze": cfg.model.freeze,
                    "pretrained_lr_factor": t.pretrained_lr_factor},
                "world_size": ctx.world_size, "rank_weights_sha256": digests, "weights_sha256": digests[0],
                "versions": {"medres3d": __version__, "torch": torch.__version__, "monai": monai.__version__,
                             "numpy": np.__version__, "python": platform.python_version()},
                "config": resolved.model_dump(mode="json"),
            }
            save_model(net, self.run_dir / "model.safetensors", class_names=data.class_names,
                       preprocessing=spec, training=training)
            text = resolved.to_yaml()
            write_atomically(self.run_dir / "config.yaml",
                             lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), "run config")
            plot_training_curves(history, self.run_dir / "training_curves.png")
            if counts is not None:
                plot_confusion_matrix(counts, data.class_names, self.run_dir / "confusion_matrix.png")
        mdist.barrier(ctx)
        result.model_path = self.run_dir / "model.safetensors"
        return result


def _make_deterministic(seed: int, deterministic: bool, ctx: mdist.DistContext) -> None:
    random.seed(seed + ctx.rank)
    np.random.seed(_seed(seed, ctx.rank))
    torch.manual_seed(seed)
    if deterministic:
        if ctx.device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def _check_compatible(state: dict[str, Any], net: nn.Module, class_names: list[str], path: Path) -> None:
    if state.get("model_config") != net.config.to_dict() or state.get("class_names") != class_names:
        raise ModelFileError(path, "the checkpoint was written for a different model or class list "
                                   f"({state.get('class_names')}); use another output_dir or remove it")


def _improved(value: float, best: float | None, metric: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value < best - min_delta if metric in _LOWER_IS_BETTER else value > best + min_delta


def _write_metrics(path: Path, history: Sequence[dict[str, Any]]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            for row in history:
                writer.writerow({k: "" if row.get(k) is None else row[k] for k in METRIC_COLUMNS})

    write_atomically(path, write, "metrics file")


def _logged_metrics(history: Sequence[dict[str, Any]], epoch: int | None) -> dict[str, float | None]:
    """The validation metrics of ``epoch``'s row of the history (empty for None)."""
    row = next((r for r in history if r["epoch"] == epoch), None) if epoch is not None else None
    return {} if row is None else {k: row.get(k) for k in METRIC_COLUMNS if k.startswith("val_")}



def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}"

    return (f"epoch {row['epoch']}/{epochs}  loss {fmt(row['train_loss'])}  val_loss {fmt(row['val_loss'])}  "
            f"val_acc {fmt(row['val_accuracy'])}  val_bal_acc {fmt(row['val_balanced_accuracy'])}  "
            f"val_auc {fmt(row['val_auc'])}  lr {row['lr']:.3g}  ({row['seconds']:.1f} s)")



