"""Adapt a pretrained audio tower to labelled clips before it is frozen again.

A frozen tower caches exactly (``clapkit.cache``), so heads train on its stored outputs in minutes; but a tower
pretrained on other audio may not carry what tells the training classes apart in audio from a source it never
heard. :func:`adapt_audio_tower` fine-tunes chosen parameters of the tower (by name prefix, e.g. its last conv
blocks) with a linear classifier over the clips' labels, on random crops of augmented views (``clapkit.augment``),
then drops the classifier and freezes the tower again: the adapted tower is an ordinary frozen tower, whose
outputs the feature store then holds.

    from clapkit.adapt import TowerAdaptConfig, adapt_audio_tower
    stats = adapt_audio_tower(model.audio_tower, waves, labels, 44100, TowerAdaptConfig(steps=400),
                              augmenter=Augmenter(AugmentConfig()), seed=0)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from clapkit.augment import Augmenter, mix_seed
from clapkit.progress import progress_bar
from clapkit.towers.base import AudioTower

__all__ = ["TowerAdaptConfig", "TowerClassifier", "adapt_audio_tower", "random_crop", "train_tower_classifier"]


@dataclass
class TowerAdaptConfig:
    """How :func:`adapt_audio_tower` trains.

    Attributes:
        steps: Optimiser steps (0: leave the tower as it is).
        batch_size: Crops per step.
        seconds: Crop length; shorter clips are repeated to it (as repeat padding does).
        train: Parameter-name prefixes of the tower to train (the aisfx CNN's blocks are ``net.conv_block1.`` …
            ``net.conv_block4.``); every other parameter stays as it is.
        lr: Peak learning rate of the classifier (one-cycle schedule, ``warmup_fraction`` of the steps rising).
        tower_lr_ratio: The tower's rate relative to the classifier's.
        weight_decay: AdamW weight decay.
        label_smoothing: Of the cross-entropy.
        warmup_fraction: Share of the steps the rate rises.
        autocast: Run the tower under bf16 autocast (as the demo's feature step does).
    """

    steps: int = 400
    batch_size: int = 32
    seconds: float = 3.0
    train: list[str] = field(default_factory=lambda: ["net.conv_block2.", "net.conv_block3.", "net.conv_block4."])
    lr: float = 1e-3
    tower_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    warmup_fraction: float = 0.1
    autocast: bool = True

    def check(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.seconds <= 0:
            raise ValueError(
                f"tower adaptation: steps ≥ 0, batch_size ≥ 1 and seconds > 0 expected, got steps={self.steps}, "
                f"batch_size={self.batch_size}, seconds={self.seconds}"
            )
        if not 0 < self.warmup_fraction < 1:
            raise ValueError(f"tower adaptation: warmup_fraction must be in (0, 1), got {self.warmup_fraction}")


def random_crop(wave: torch.Tensor, samples: int, generator: torch.Generator | None) -> torch.Tensor:
    """A window of ``samples`` of a clip [T]: a random crop (the centre one without a generator), or the clip
    repeated to length."""
    if len(wave) >= samples:
        extra = len(wave) - samples
        start = int(torch.randint(extra + 1, (), generator=generator)) if generator is not None else extra // 2
        return wave[start : start + samples]
    return wave.repeat(math.ceil(samples / len(wave)))[:samples]


class TowerClassifier(nn.Module):
    """Tower → pooled vector ⊕ mean frame → a linear layer over ``classes`` (logits [B, len(classes)]).

    Attributes:
        classes: The class of each output, sorted.
        stats: What :func:`train_tower_classifier` reports of its training.
    """

    def __init__(self, tower: AudioTower, classes: Sequence[str]) -> None:
        super().__init__()
        self.tower = tower
        self.classes = list(classes)
        self.stats: dict[str, Any] = {}
        width = tower.width + tower.seq_width
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Dropout(0.2), nn.Linear(width, len(self.classes)))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        out = self.tower(wave)
        return self.head(torch.cat([out.pooled, out.sequence.mean(1)], 1).float())


def adapt_audio_tower(
    tower: AudioTower,
    waves: Sequence[torch.Tensor],
    labels: Sequence[str],
    sample_rate: int,
    cfg: TowerAdaptConfig,
    *,
    augmenter: Augmenter | None = None,
    seed: int = 0,
    progress: bool = True,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``tower`` in place on labelled clips (:func:`train_tower_classifier`, the classifier then
    dropped); it comes back frozen (``requires_grad`` off, eval mode).

    Returns:
        ``{"steps", "clips", "classes", "trained_parameters", "final_loss", "train_seconds"}``.

    Raises:
        ValueError: as :func:`train_tower_classifier`, and for a ``cfg.train`` that names nothing to train.
    """
    if not cfg.train:
        raise ValueError("tower adaptation: `train` names no parameter prefix; give e.g. ['net.conv_block4.']")
    classifier = train_tower_classifier(
        tower, waves, labels, sample_rate, cfg, augmenter=augmenter, seed=seed, progress=progress, names=names
    )
    return classifier.stats


def train_tower_classifier(
    tower: AudioTower,
    waves: Sequence[torch.Tensor],
    labels: Sequence[str],
    sample_rate: int,
    cfg: TowerAdaptConfig,
    *,
    augmenter: Augmenter | None = None,
    seed: int = 0,
    progress: bool = True,
    names: Sequence[str] | None = None,
) -> TowerClassifier:
    """Train a linear classifier over the labels on ``tower``, and the tower's ``cfg.train`` parameters with it
    (none: a linear probe on the frozen tower). The tower is trained in place and comes back frozen.

    Batch norm keeps its pretrained statistics (the tower runs in eval mode while it trains). Each crop is drawn
    from a view of its clip made by ``augmenter`` with a seed of (``seed``, step, clip), so a run is the same for
    the same seed and inputs.

    Args:
        tower: The audio tower (its forward takes a waveform batch [B, S]).
        waves: Mono clips [T] at ``sample_rate``.
        labels: One label per clip; at least two distinct ones.
        sample_rate: Rate of ``waves``, Hz.
        cfg: What trains and how long.
        augmenter: Views of the clips (``None``: the clean clips).
        seed: Seed of the crops, batches, views and the classifier's initial weights.
        progress: A progress bar over the steps.
        names: A name per clip for error messages (default: its index).

    Returns:
        The classifier (in eval mode) over the tower; its ``stats``: ``{"steps", "clips", "classes",
        "trained_parameters", "final_loss", "train_seconds"}``.

    Raises:
        ValueError: bad settings, no clips, fewer than two labels, a clip that is empty or not finite, a prefix
            of ``cfg.train`` that names no parameter, or a loss that is not finite.
    """
    cfg.check()
    if len(waves) != len(labels):
        raise ValueError(f"tower adaptation: {len(waves)} clips but {len(labels)} labels")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"tower adaptation: needs clips of at least two labels, got {classes}")
    for i, wave in enumerate(waves):
        name = names[i] if names is not None else f"clip {i}"
        if wave.ndim != 1 or wave.numel() == 0:
            raise ValueError(f"tower adaptation: {name}: expected a non-empty mono clip [T], got {tuple(wave.shape)}")
        if not torch.isfinite(wave).all():
            raise ValueError(f"tower adaptation: {name}: has NaN or infinite samples")
    params = dict(tower.named_parameters())
    for prefix in cfg.train:
        if not any(n.startswith(prefix) for n in params):
            raise ValueError(
                f"tower adaptation: no parameter of {type(tower).__name__} starts with {prefix!r} "
                f"(its parameters start with {sorted({n.split('.')[0] for n in params})})"
            )
    trained = [p for n, p in params.items() if any(n.startswith(prefix) for prefix in cfg.train)]
    for name, param in params.items():
        param.requires_grad = any(name.startswith(prefix) for prefix in cfg.train)
    torch.manual_seed(seed)
    classifier = TowerClassifier(tower, classes)
    classifier.stats = {
        "steps": cfg.steps,
        "clips": len(waves),
        "classes": len(classes),
        "trained_parameters": sum(p.numel() for p in trained),
        "final_loss": None,
        "train_seconds": 0.0,
    }
    if cfg.steps == 0:
        _freeze(tower)
        return classifier.eval()
    index = {c: i for i, c in enumerate(classes)}
    targets = torch.tensor([index[label] for label in labels])
    groups = [{"params": list(classifier.head.parameters()), "lr": cfg.lr}]
    if trained:
        groups.append({"params": trained, "lr": cfg.lr * cfg.tower_lr_ratio})
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=cfg.steps, pct_start=cfg.warmup_fraction
    )
    samples = round(cfg.seconds * sample_rate)
    generator = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    start = time.perf_counter()
    bar = progress_bar(range(cfg.steps), desc="adapt audio tower", unit="step", disable=not progress)
    loss = torch.tensor(float("nan"))
    try:
        for step in bar:
            classifier.train()
            tower.eval()  # batch norm keeps its pretrained statistics
            rows = torch.randint(len(waves), (cfg.batch_size,), generator=generator).tolist()
            batch = []
            torch.set_num_threads(1)  # the augmentation chain's many small ops lose time to thread hand-offs
            try:
                for row in rows:
                    wave = waves[row]
                    if augmenter is not None:
                        wave = augmenter(wave, sample_rate, seed=mix_seed(seed, step, row))
                    batch.append(random_crop(wave, samples, generator))
            finally:
                torch.set_num_threads(threads)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.autocast):
                logits = classifier(torch.stack(batch))
            loss = nn.functional.cross_entropy(logits.float(), targets[rows], label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise ValueError(f"tower adaptation: the loss is {loss.item()} at step {step}; lower cfg.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    finally:
        _freeze(tower)
    classifier.stats["final_loss"] = round(loss.item(), 4)
    classifier.stats["train_seconds"] = round(time.perf_counter() - start, 1)
    return classifier.eval()


def _freeze(tower: nn.Module) -> None:
    for param in tower.parameters():
        param.requires_grad = False
    tower.eval()
