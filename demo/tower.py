"""Step 5a: the audio tower adapted to the training clips, before the features are stored (``tower.steps`` > 0).

The pretrained aisfx CNN hears what a sound-effects library taught it; a class heard in a package it never trained
on is often missed by what the heads can read off its frozen outputs (docs/demo.md, generalisation across
sources). This step fine-tunes the tower's last conv blocks with a linear classifier over the training clips'
classes (``clapkit.adapt``), on random crops of augmented views (``tower.augment``: ``clapkit.augment``'s default
chain unless set), then freezes it again. Only training clips are used — never the in-source or cross-source test
clips. The adapted weights are written once (``tower/audio_tower.safetensors``); the features step stores the
adapted tower's outputs, the arms' models carry its weights, and every later step sees the same tower.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from clapkit.adapt import TowerAdaptConfig, adapt_audio_tower
from clapkit.audio import load_audio
from clapkit.augment import AugmentConfig, Augmenter
from clapkit.checkpoint import write_safetensors
from clapkit.steps import StepRunner, fingerprint
from demo.data import Workspace

__all__ = ["TOWER_WEIGHTS", "adapt_config", "make_tower"]

#: The adapted tower's weights in the step's folder.
TOWER_WEIGHTS = "audio_tower.safetensors"


def adapt_config(work: Workspace) -> TowerAdaptConfig:
    """``clapkit.adapt``'s settings from the config's ``tower`` section."""
    cfg = work.config.tower
    return TowerAdaptConfig(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        seconds=cfg.seconds,
        train=list(cfg.train),
        lr=cfg.lr,
        tower_lr_ratio=cfg.tower_lr_ratio,
    )


def make_tower(work: Workspace, runner: StepRunner) -> Path | None:
    """Adapt the audio tower (or reuse the adapted one); the weights' path, ``None`` when ``tower.steps`` is 0.

    Points :meth:`Workspace.model` at the weights, so the steps after this one use the adapted tower.
    """
    cfg = work.config.tower
    if cfg.steps == 0:
        work.use_tower_weights(None)
        return None
    adapt = adapt_config(work)
    adapt.check()
    augment = AugmentConfig.from_mapping(cfg.augment, "tower.augment")
    m = work.config.model
    folder = work.out / "tower"
    fp = fingerprint(
        runner.fingerprints["data"], m.name, m.pretrained, m.overrides, dataclasses.asdict(cfg), work.config.seed
    )

    def run() -> dict[str, Any]:
        work.use_tower_weights(None)
        model = work.model()
        rate = work.sample_rate
        records = work.records("train")
        waves = [load_audio(work.dataset_dir / r["audio"], rate, name=r["audio"]) for r in records]
        stats = adapt_audio_tower(
            model.audio_tower,
            waves,
            [r["class"] for r in records],
            rate,
            adapt,
            augmenter=Augmenter(augment),
            seed=work.config.seed,
            progress=work.progress,
            names=[r["audio"] for r in records],
        )
        # A temporary name, renamed into place: the step's marker is written only after this returns.
        tmp = folder / f".{TOWER_WEIGHTS}.tmp"
        write_safetensors(model.audio_tower.state_dict(), tmp)
        tmp.replace(folder / TOWER_WEIGHTS)
        return stats

    s = runner.step("tower", fp, folder, run)
    runner.log(
        f"        adapted {s['trained_parameters']:,} tower parameters ({', '.join(cfg.train)}) on {s['clips']} "
        f"training clips of {s['classes']} classes, {s['steps']} steps (final loss {s['final_loss']})"
    )
    work.use_tower_weights(folder / TOWER_WEIGHTS)
    return folder / TOWER_WEIGHTS
