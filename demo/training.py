"""Step 6, **train**: each arm (``infonce``, ``compa_hardneg``, …) trained once on the stored features with the
training app's ``ClapModule`` (Lightning), on the same data, steps and seed, and saved with ``save_pretrained``."""

from __future__ import annotations

import dataclasses
import random
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

import clapkit
from clapkit.cache import FeatureStore
from clapkit.model import ClapModel
from clapkit.steps import StepRunner, fingerprint
from demo.data import Workspace
from demo.features import TrainSample, train_samples
from train.callbacks import progress_bars_for_logs
from train.clap import ClapModule
from train.optim import OptimConfig, ParamGroup

__all__ = ["StoredFeatureClapModule", "StoredFeatureData", "arm_fingerprint", "fit", "train_arms"]


class _Samples(Dataset):
    """Draws a caption (a negative subset, and one of a clip's stored views) per visit; each draw is seeded by
    (seed, sample, visit), so every arm of one seed sees the same captions in the same order whatever its loss uses."""

    def __init__(
        self, samples: list[TrainSample], *, seed: int, caption_source: str, max_negatives: int, positives: bool
    ) -> None:
        self.samples = samples
        self.positives = positives
        self.seed = seed
        self.caption_source = caption_source
        self.max_negatives = max_negatives
        self.visits = [0] * len(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.samples[i]
        rng = random.Random(f"{self.seed}/{i}/{self.visits[i]}")
        self.visits[i] += 1
        pool = sample.captions if self.caption_source == "all" else sample.captions[:1]
        caption = pool[rng.randrange(len(pool))]
        negatives = list(sample.negatives)
        if len(negatives) > self.max_negatives:
            negatives = rng.sample(negatives, self.max_negatives)
        # One of the clip's stored views (features.clip_views), drawn last: without views the draws are as before.
        key = sample.key if not sample.views else [sample.key, *sample.views][rng.randrange(1 + len(sample.views))]
        return {
            "key": key,
            "caption": caption,
            "positives": [c for c in sample.captions if c != caption] if self.positives else [],
            "negatives": negatives,
            "counterfactual": sample.counterfactual,
        }


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "audio_keys": [it["key"] for it in items],
        "captions": [it["caption"] for it in items],
        "positives": [it["positives"] for it in items],
        "negatives": [it["negatives"] for it in items],
        "audio_negative_keys": [it["counterfactual"] for it in items],
    }


class StoredFeatureData(pl.LightningDataModule):
    """Batches of feature keys and captions for ``StoredFeatureClapModule``; epochs reshuffle (seeded)."""

    def __init__(
        self,
        samples: list[TrainSample],
        *,
        batch_size: int,
        seed: int,
        caption_source: str = "all",
        max_negatives: int = 4,
        positives: bool = False,
    ) -> None:
        super().__init__()
        self.positives = positives
        if len(samples) < batch_size:
            raise ValueError(f"train: {len(samples)} samples is less than one batch of {batch_size}; lower batch_size")
        self.samples = samples
        self.batch_size = batch_size
        self.seed = seed
        self.caption_source = caption_source
        self.max_negatives = max_negatives

    def train_dataloader(self) -> DataLoader:
        data = _Samples(
            self.samples,
            seed=self.seed,
            caption_source=self.caption_source,
            max_negatives=self.max_negatives,
            positives=self.positives,
        )
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            data, batch_size=self.batch_size, shuffle=True, drop_last=True, collate_fn=_collate, generator=generator
        )


class StoredFeatureClapModule(ClapModule):
    """``ClapModule`` whose frozen towers are replaced by stored outputs (``clapkit.cache``).

    Call ``use_features`` before training. Batches carry ``audio_keys`` (and ``audio_negative_keys`` for the
    counterfactual audio) instead of waveforms; captions are looked up in the text store.
    """

    audio_store: FeatureStore | None = None
    text_store: FeatureStore | None = None
    audio_negatives: bool = False

    def use_features(self, audio: FeatureStore, text: FeatureStore, *, audio_negatives: bool = False) -> None:
        if audio_negatives and "audio_negatives" not in self.loss_fn.inputs:
            raise ValueError(
                f"audio_negatives: the {type(self.loss_fn).__name__} loss takes no audio negatives; use compa_hardneg "
                "or compa_modular, or turn audio_negatives off"
            )
        self.audio_store, self.text_store, self.audio_negatives = audio, text, audio_negatives

    def encode_audio(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.model.audio_from_tower(self.audio_store.batch(batch["audio_keys"], self.device))

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.model.text_from_tower(self.text_store.batch(texts, self.device))

    def embed_batch(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = super().embed_batch(batch)
        if self.audio_negatives:
            keys = batch["audio_negative_keys"]
            rows = [i for i, k in enumerate(keys) if k]
            audio = out["audio_embeds"]
            embeds = audio.new_zeros(len(keys), 1, audio.shape[1])  # [B, 1, D]
            mask = torch.zeros(len(keys), 1, dtype=torch.bool, device=audio.device)  # [B, 1]
            if rows:
                embeds[rows, 0] = self.model.audio_from_tower(
                    self.audio_store.batch([keys[i] for i in rows], self.device)
                )
                mask[rows, 0] = True
            out["audio_negative_embeds"], out["audio_negative_mask"] = embeds, mask
        return out


def _optim_config(raw: dict[str, Any]) -> OptimConfig:
    groups = [g if isinstance(g, ParamGroup) else ParamGroup(**g) for g in raw.get("param_groups", [])]
    return OptimConfig(**{**raw, "param_groups": groups})


def _trainer(work: Workspace, log_dir: Path) -> pl.Trainer:
    cfg = work.config.train
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=cfg.steps,
        max_epochs=-1,
        logger=CSVLogger(str(log_dir), name="", version=""),
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, cfg.steps // 10)),
        enable_progress_bar=work.progress,
        callbacks=progress_bars_for_logs(enable_progress_bar=work.progress),
        default_root_dir=str(log_dir),
        precision=cfg.precision,
    )


def fit(work: Workspace, arm_name: str, *, seed: int, export_dir: Path, log_dir: Path | None = None) -> ClapModel:
    """Train one arm on the stored features and export it with ``save_pretrained`` to ``export_dir``."""
    cfg = work.config.train
    if arm_name not in cfg.arms:
        raise KeyError(f"unknown arm {arm_name!r}; configured arms: {', '.join(cfg.arms)}")
    arm = cfg.arms[arm_name]
    audio, text = work.stores()
    samples = train_samples(work)
    if not arm.negatives:
        samples = [dataclasses.replace(s, negatives=[]) for s in samples]
    samples += [s for s in samples if s.counterfactual is None] * (cfg.clip_repeats - 1)
    pl.seed_everything(seed, workers=True, verbose=False)
    m = work.config.model
    model = clapkit.create_model(m.name, pretrained=m.pretrained, **m.overrides)
    # The frozen towers must be those the stored features came from (they differ only without pretrained weights).
    model.audio_tower.load_state_dict(work.model().audio_tower.state_dict())
    model.text_tower.load_state_dict(work.model().text_tower.state_dict())
    module = StoredFeatureClapModule(
        model=model,
        loss=arm.loss,
        loss_args=arm.loss_args,
        optimizer=_optim_config(cfg.optimizer),
        export_dir=str(export_dir),
    )
    if arm.positives and "positives" not in module.loss_fn.inputs:
        raise ValueError(f"train.arms.{arm_name}.positives: the {arm.loss} loss takes no positives")
    module.use_features(audio, text, audio_negatives=arm.audio_negatives)
    data = StoredFeatureData(
        samples,
        batch_size=cfg.batch_size,
        seed=seed,
        caption_source=cfg.caption_source,
        max_negatives=cfg.max_negatives,
        positives=arm.positives,
    )
    trainer = _trainer(work, log_dir or export_dir.parent / f"{export_dir.name}_logs")
    with warnings.catch_warnings():
        # Frozen towers stay in eval mode on purpose; the batches come from the datamodule, the module only
        # declares hooks it shares with the shard-reading app; there is no validation set here.
        for message in (
            r"Found \d+ module\(s\) in eval mode",
            "You have overridden `on_before_batch_transfer`",
            "You defined a `validation_step` but have no `val_dataloader`",
            "The number of training batches .* is smaller than the logging interval",
            ".*isinstance.treespec, LeafSpec.*",
        ):
            warnings.filterwarnings("ignore", message=message)
        trainer.fit(module, datamodule=data)
    return module.model.eval()


def arm_fingerprint(work: Workspace, features_fingerprint: str, arm_name: str, seed: int) -> str:
    """What a trained arm depends on: the stored features, the model, the training settings, the arm, the seed."""
    common = {k: v for k, v in dataclasses.asdict(work.config.train).items() if k != "arms"}
    return fingerprint(features_fingerprint, work.config.model, common, work.config.train.arms[arm_name], seed)


def train_arms(work: Workspace, runner: StepRunner) -> dict[str, Any]:
    """Step 6: every configured arm trained (or reused) under ``models/<arm>``; arm → ``{"model": folder}``."""
    results = {}
    for arm_name in work.config.train.arms:
        folder = work.out / "models" / arm_name
        fp = arm_fingerprint(work, runner.fingerprints["features"], arm_name, work.config.seed)

        def run(arm_name: str = arm_name, folder: Path = folder) -> dict[str, Any]:
            fit(work, arm_name, seed=work.config.seed, export_dir=folder / "model", log_dir=folder / "logs")
            return {"model": str(folder / "model")}

        results[arm_name] = runner.step(f"train {arm_name}", fp, folder, run)
    return results
