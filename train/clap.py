"""Contrastive audio-text training: ``python -m train clap fit -c configs/clap/<name>.yaml``.

- :class:`ClapModule` wraps a ``clapkit.ClapModel`` (passed in, or built from a registered name plus
  overrides, or initialised from a saved model) and any loss registered in ``clapkit.losses.LOSSES``.
- :class:`ClapDataModule` streams batches from clapkit WebDataset shards (``clapkit.data.reader``).
- :func:`main` is the LightningCLI: ``trainer`` (strategy, devices, num_nodes, precision, accumulation,
  clipping, loggers), ``model``, ``data``, ``checkpoint`` (periodic + final ``last.ckpt``) and ``eval``
  (the evaluation suite on held-out sets) sections, all from YAML.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import FSDPStrategy

from clapkit.augment import AugmentConfig
from clapkit.cache import TowerCache, waveform_keys
from clapkit.checkpoint import load_state
from clapkit.config import AudioConfig, ModelConfig, merge
from clapkit.data.reader import ReaderConfig, ShardReader
from clapkit.evaluate.retrieval import retrieval_metrics
from clapkit.factory import create_model, load
from clapkit.losses import LOSSES
from clapkit.model import ClapModel
from train.callbacks import Checkpoint, EvalSuite, ReaderStats, SamplesPerSecond
from train.cli import TrainCLI
from train.optim import OptimConfig, build_optimizer, build_scheduler, freeze_zero_lr, param_ndims

__all__ = ["ClapDataModule", "ClapModule", "build_clap_model", "main"]

#: Per-sample text groups of a reader batch → the loss inputs they feed.
_TEXT_GROUPS = {"negatives": ("negative_embeds", "negative_mask"), "positives": ("positive_embeds", "positive_mask")}


def build_clap_model(
    model_name: str, overrides: dict[str, Any] | None = None, *, pretrained: bool = True, init_from: str | None = None
) -> tuple[ClapModel, Path | None]:
    """A ``ClapModel`` from a registered name (+ overrides), or from ``init_from`` (anything ``clapkit.load``
    takes) with ``overrides`` merged into its config (freeze flags, dropout; the weights must still fit).

    Returns:
        The model and the folder its tower files come from (``init_from`` when it is a folder).
    """
    if init_from is None:
        return create_model(model_name, pretrained=pretrained, **(overrides or {})), None
    source = load(init_from)
    if not overrides:
        return source.train(), Path(init_from) if Path(init_from).is_dir() else None
    root = Path(init_from) if Path(init_from).is_dir() else None
    config = ModelConfig.from_dict(merge(source.config.to_dict(), overrides))
    model = ClapModel(config, pretrained=False, root=root)
    load_state(model, source.state_dict(), str(init_from))
    return model, root


def _shardable_scalars(module: torch.nn.Module) -> list[str]:
    """Give 0-d parameters (the logit scale) shape [1], as FSDP cannot shard scalars; returns their names.

    State dicts loaded into ``module`` may still hold them 0-d (a hook reshapes them), and
    :func:`_unshardable_scalars` turns saved ones back, so checkpoints and exports match unsharded runs.
    """
    names = []
    for prefix, owner in module.named_modules():
        scalars = [n for n, p in owner.named_parameters(recurse=False) if p.ndim == 0]
        for name in scalars:
            param = getattr(owner, name)
            setattr(owner, name, torch.nn.Parameter(param.detach().reshape(1), requires_grad=param.requires_grad))
            names.append(f"{prefix}.{name}" if prefix else name)
        if scalars:
            owner.register_load_state_dict_pre_hook(partial(_load_as_vectors, names=scalars))
    return names


def _load_as_vectors(module, state_dict, prefix, *args, names: list[str]) -> None:
    for name in names:
        value = state_dict.get(prefix + name)
        if getattr(value, "ndim", None) == 0:  # also Lightning's lazily loaded checkpoint tensors
            state_dict[prefix + name] = torch.reshape(value, (1,))


def _unshardable_scalars(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Reshape the [1] tensors of :func:`_shardable_scalars` in a full state dict back to 0-d, in place."""
    for name in names:
        value = state.get(name)
        if type(value) is torch.Tensor and value.shape == (1,):  # not a sharded checkpoint's ShardedTensor
            state[name] = value.reshape(())
    return state


def _autocast_only(strategy: FSDPStrategy) -> None:
    """Mixed precision under FSDP as under DDP: autocast over float32 parameters, gradients and buffers.

    Lightning's FSDP plugin also casts the parameters and buffers to 16 bit for the forward pass. The buffers
    include ``LogMel``'s filterbank and window, which stay float32 on purpose (it runs with autocast off: 16-bit
    FFTs lose the quiet bins the log exposes), so the float32 spectrogram would meet a 16-bit filterbank. A
    ``mixed_precision`` set on the strategy is kept as given.
    """
    if strategy.mixed_precision is None and "mixed" in strategy.precision_plugin.precision:
        from torch.distributed.fsdp import MixedPrecision

        strategy.mixed_precision = MixedPrecision()  # no casts: FSDP shards, autocast (the plugin's) computes


def _check_fsdp_validation(trainer: pl.Trainer) -> None:
    """Refuse validation shards under FSDP with several ranks when their batches cannot be evened out.

    Every FSDP forward pass gathers parameters from all ranks, so all ranks must run the same number of
    validation batches. Shards split between ranks give them different numbers; :class:`ClapDataModule` fills
    the shorter shares with padding batches, which needs the manifest's sample counts.
    """
    datamodule = trainer.datamodule
    if trainer.world_size == 1 or not getattr(getattr(datamodule, "hparams", None), "val_shards", None):
        return
    counts = getattr(datamodule, "val_batches_per_rank", lambda: None)()
    if isinstance(trainer.limit_val_batches, int) or counts is not None:
        return
    raise ValueError(
        "data.val_shards with strategy fsdp: every rank must run the same number of validation batches, and "
        "without a manifest (shards written by `clapkit shards write`) their counts are unknown; give the shard "
        "folder or its manifest.json, set trainer.limit_val_batches to a count every rank reaches, or drop "
        "data.val_shards and run `clapkit eval` on the exported model"
    )


def _optimizer_layout(strategy: pl.strategies.Strategy) -> str:
    return "fsdp" if isinstance(strategy, FSDPStrategy) else "standard"


def _full_state_dict(strategy: FSDPStrategy, scalars: list[str]) -> dict[str, torch.Tensor]:
    """The LightningModule's full state dict on rank 0 (empty on the others), gathered from the FSDP shards
    whatever format the strategy checkpoints in. A collective: every rank calls it."""
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    # Offloading to the CPU from the CPU frees the gathered parameters before they are copied (torch's
    # FlatParamHandle.to_cpu), so offload only from an accelerator.
    config = FullStateDictConfig(offload_to_cpu=strategy.root_device.type != "cpu", rank0_only=True)
    with FSDP.state_dict_type(strategy.model, StateDictType.FULL_STATE_DICT, config):
        return _unshardable_scalars(strategy.model.state_dict(), scalars)


class ClapModule(pl.LightningModule):
    """A ClapModel trained with a registered contrastive loss.

    Args:
        model: The network; when ``None`` it is built from ``model_name`` / ``model_overrides`` / ``init_from``.
        model_name: Registered architecture (``clapkit models`` lists them).
        model_overrides: Nested config overrides, e.g. ``{"embed_dim": 256, "text_tower": {"freeze": true}}``.
        pretrained: Load the towers' pretrained weights where they have them.
        init_from: Start from a trained model (``save_pretrained`` folder or a convertible checkpoint) instead.
        loss: Name in ``clapkit.losses.LOSSES`` (``infonce``, ``compa_hardneg``, ``compa_modular``, ``afclap``).
        loss_args: Keyword arguments of the loss (e.g. ``{"symmetric": true}`` for ``afclap``).
        optimizer: AdamW, warmup + cosine, per-prefix learning rates.
        cache_frozen_towers: Cache the outputs of frozen towers (exact; see ``clapkit.cache``).
        cache_max_items: Entries kept per cached tower.
        cache_dtype: Storage dtype of cached features (``float16`` | ``bfloat16`` | ``float32``).
        export_dir: Where the final model is written with ``save_pretrained`` (default: ``<log dir>/model``).
    """

    def __init__(
        self,
        model: ClapModel | None = None,
        model_name: str = "htsat-tiny",
        model_overrides: dict[str, Any] | None = None,
        pretrained: bool = True,
        init_from: str | None = None,
        loss: str = "infonce",
        loss_args: dict[str, Any] | None = None,
        optimizer: OptimConfig | None = None,
        cache_frozen_towers: bool = False,
        cache_max_items: int = 100_000,
        cache_dtype: str = "float16",
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(optimizer, dict):  # hparams restored from a checkpoint
            optimizer = OptimConfig(**optimizer)
        self.optim = optimizer or OptimConfig()
        self.save_hyperparameters(ignore=["model"])
        self.hparams["optimizer"] = asdict(self.optim)  # plain types: checkpoints load with weights_only
        if model is None:
            model, self._root = build_clap_model(
                model_name, model_overrides, pretrained=pretrained, init_from=init_from
            )
        else:
            self._root = None
        self.model = model
        self.loss_fn = LOSSES.get(loss)(**(loss_args or {}))
        # Validation batches are not matched across ranks (shards split unevenly; the last batch is short), so the
        # validation loss is per rank; its sum and sample count are summed over ranks at the end of the pass.
        self.val_loss_fn = LOSSES.get(loss)(**{**(loss_args or {}), "rank": 0, "world_size": 1})
        self.export_dir = export_dir
        self.audio_cache = self.text_cache = None
        if cache_frozen_towers:
            self._make_caches(cache_max_items, cache_dtype)
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._val_loss: list[tuple[torch.Tensor, int]] = []  # (mean loss, samples) per validation batch
        self._ndims: dict[str, int] | None = None  # parameter shapes before FSDP flattens them (setup)
        self._scalars: list[str] = []  # 0-d parameters made [1] for FSDP (setup)

    def _make_caches(self, max_items: int, dtype_name: str) -> None:
        dtypes = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
        if dtype_name not in dtypes:
            raise ValueError(f"cache_dtype {dtype_name!r}: valid: {', '.join(dtypes)}")
        cfg = self.model.config
        if not (cfg.audio_tower.freeze or cfg.text_tower.freeze):
            raise ValueError(
                "cache_frozen_towers: neither tower is frozen, so there is nothing to cache; set "
                "model_overrides.audio_tower.freeze / text_tower.freeze to true, or turn the cache off"
            )
        if cfg.audio_tower.freeze:
            self.audio_cache = TowerCache(self.model.audio_head is not None, max_items, dtypes[dtype_name])
        if cfg.text_tower.freeze:
            self.text_cache = TowerCache(self.model.text_head is not None, max_items, dtypes[dtype_name])

    # ------------------------------------------------------------------ encoding
    def _lengths(self, batch: dict[str, Any], key: str = "lengths") -> torch.Tensor | None:
        # Zero padding is masked out; repeat padding is content (as ClapModel.embed_audio).
        return batch[key] if self.model.config.audio.pad == "zero" else None

    def _uses_counterfactuals(self, batch: dict[str, Any]) -> bool:
        return "audio_negatives" in self.loss_fn.inputs and "counterfactual" in batch

    def encode_audio(self, batch: dict[str, Any]) -> torch.Tensor:
        """Reader batch → audio embeddings [B, D]."""
        return self._encode_waves(batch["audio"], self._lengths(batch), batch.get("audio_keys"))

    def encode_with_counterfactuals(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Reader batch → audio embeddings [B, D] and those of the counterfactual audio of the Bc samples that have
        one (``counterfactual`` [B, T] where ``has_counterfactual``) [Bc, D], from one tower call."""
        has = batch["has_counterfactual"]
        wave = torch.cat([batch["audio"], batch["counterfactual"][has]])  # [B + Bc, T]
        lengths, keys = self._lengths(batch), batch.get("audio_keys")
        if lengths is not None:
            lengths = torch.cat([lengths, batch["counterfactual_lengths"][has]])
        if keys is not None:
            keys = keys + batch["counterfactual_keys"]
        embeds = self._encode_waves(wave, lengths, keys)  # [B + Bc, D]
        size = batch["audio"].shape[0]
        return embeds[:size], embeds[size:]

    def _encode_waves(self, wave: torch.Tensor, lengths: torch.Tensor | None, keys: list[str] | None) -> torch.Tensor:
        if self.audio_cache is None:
            return self.model.encode_audio(wave, lengths=lengths)

        def tower(idx: list[int]):
            return self.model.audio_tower(wave[idx], None if lengths is None else lengths[idx])

        return self.model.audio_from_tower(self.audio_cache(keys, tower, wave.device))

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Captions → text embeddings [N, D]."""
        if self.text_cache is None:
            return self.model.encode_text(self.model.tokenize(texts))

        def tower(idx: list[int]):
            tokens = self.model.tokenize([texts[i] for i in idx])
            ids, mask = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
            return self.model.text_tower(ids, mask)

        return self.model.text_from_tower(self.text_cache(texts, tower, self.device))

    def embed_batch(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Audio [B, D], captions [B, D] and, for losses that use them, per-sample text groups [B, K, D] + masks
        and the counterfactual audio as audio negatives [B, 1, D] + mask [B, 1] (``False`` where a sample has none).
        """
        captions = list(batch["captions"])
        size = len(captions)
        texts, spans = list(captions), {}
        for group in _TEXT_GROUPS:
            if group in self.loss_fn.inputs:
                lists = batch[group]
                spans[group] = (len(texts), [len(x) for x in lists])
                texts += [t for x in lists for t in x]
        text = self.encode_texts(texts)  # [B + Σ K, D]
        if self._uses_counterfactuals(batch):
            audio, counter = self.encode_with_counterfactuals(batch)  # [B, D], [Bc, D]
            has = batch["has_counterfactual"].to(audio.device)  # [B]
            embeds = audio.new_zeros(size, 1, audio.shape[1])  # [B, 1, D]
            embeds[has, 0] = counter
            negatives = {"audio_negative_embeds": embeds, "audio_negative_mask": has[:, None]}
        else:
            audio, negatives = self.encode_audio(batch), {}
        out = {"audio_embeds": audio, "text_embeds": text[:size], **negatives}
        for group, (start, counts) in spans.items():
            embeds_key, mask_key = _TEXT_GROUPS[group]
            k = max(counts, default=0)
            mask = torch.arange(k, device=text.device)[None, :] < torch.tensor(counts, device=text.device)[:, None]
            embeds = text.new_zeros(size, k, text.shape[1])  # [B, K, D]
            embeds[mask] = text[start : start + sum(counts)]
            out[embeds_key], out[mask_key] = embeds, mask
        return out

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        # Before DDP/FSDP wrap the module: frozen parameters, their shapes, and scalars FSDP cannot shard.
        freeze_zero_lr(self, self.optim)
        self._ndims = param_ndims(self)
        if isinstance(self.trainer.strategy, FSDPStrategy):
            _check_fsdp_validation(self.trainer)
            self._scalars = _shardable_scalars(self)
            _autocast_only(self.trainer.strategy)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The weights are saved alike under every strategy (scalars made [1] for FSDP go back to 0-d); the
        # optimizer states are not: Lightning keys FSDP's by model parameter order, other strategies' by
        # optimizer order, and the two differ when towers are frozen or learning rates grouped.
        _unshardable_scalars(checkpoint["state_dict"], self._scalars)
        checkpoint["optimizer_layout"] = _optimizer_layout(self.trainer.strategy)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved, current = checkpoint.get("optimizer_layout"), _optimizer_layout(self.trainer.strategy)
        resuming = self.trainer.state.fn == "fit" and checkpoint.get("optimizer_states")
        if resuming and saved is not None and saved != current:
            raise ValueError(
                f"--ckpt_path: the checkpoint holds {saved} optimizer states, this run uses {current}; resume with "
                "the trainer.strategy that wrote it, or start a new run from the exported model (model.init_from)"
            )

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm=None
    ) -> None:
        """Clip by norm under FSDP with its own ``clip_grad_norm_``: the norm is over every rank's shard."""
        strategy = self.trainer.strategy
        if not gradient_clip_val or not isinstance(strategy, FSDPStrategy) or gradient_clip_algorithm == "value":
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        strategy.model.clip_grad_norm_(gradient_clip_val)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.audio_cache is not None and isinstance(batch, dict):
            batch["audio_keys"] = waveform_keys(batch["audio"], self._lengths(batch))
            if self._uses_counterfactuals(batch):
                has = batch["has_counterfactual"]
                lengths = self._lengths(batch, "counterfactual_lengths")
                batch["counterfactual_keys"] = waveform_keys(
                    batch["counterfactual"][has], None if lengths is None else lengths[has]
                )
        return batch

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        terms = self.loss_fn(**self.embed_batch(batch), logit_scale=self.model.scale())
        size = len(batch["captions"])
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=size)
        for name, value in terms.items():
            if name != "loss":
                self.log(f"train/{name}", value, batch_size=size)
        self.log("lr", self.optimizers().param_groups[0]["lr"], prog_bar=True, batch_size=size)
        self.log("train/logit_scale", self.model.scale(), batch_size=size)
        return terms["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.embed_batch(batch)
        if batch.get("padding"):  # a rank whose share ran out keeps step with the others (FSDP gathers per forward)
            self._val.append((out["audio_embeds"][:0].float(), out["text_embeds"][:0].float()))
            return
        terms = self.val_loss_fn(**out, logit_scale=self.model.scale())
        self._val_loss.append((terms["loss"].detach().float(), len(batch["captions"])))
        self._val.append((out["audio_embeds"].float(), out["text_embeds"].float()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        audio = self._gather(torch.cat([a for a, _ in self._val]))
        text = self._gather(torch.cat([t for _, t in self._val]))
        self._val.clear()
        # Loss summed over every rank's samples, then divided by their number: the mean over the whole set.
        total = torch.zeros(2, device=audio.device)  # [loss sum, samples]
        for loss, n in self._val_loss:
            total += torch.stack([loss.to(total.device) * n, total.new_tensor(n)])
        self._val_loss.clear()
        if self.trainer.world_size > 1:
            total = self.all_gather(total).sum(0)
        if not len(audio):
            return
        metrics = retrieval_metrics(audio, text, torch.arange(len(audio)), device=audio.device)
        # Equal on every rank (computed from the gathered rows): the mean over ranks is the value.
        self.log("val/loss", total[0] / total[1], prog_bar=True, sync_dist=True)
        for name in ("text_to_audio_R@1", "text_to_audio_R@10", "audio_to_text_R@1", "audio_to_text_R@10"):
            self.log(f"val/{name}", metrics[name], sync_dist=True)

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of every rank [Σ N_r, D]; ranks may hold different numbers of rows."""
        if self.trainer.world_size == 1:
            return x
        sizes = self.all_gather(torch.tensor(len(x), device=x.device))  # [W]
        padded = torch.nn.functional.pad(x, (0, 0, 0, int(sizes.max()) - len(x)))
        rows = self.all_gather(padded)  # [W, max N, D]
        return torch.cat([rows[r, : int(n)] for r, n in enumerate(sizes)])

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self, self.optim, self._ndims)
        # A dry run (fast_dev_run) takes one step: the schedule's warmup cannot fit, and does not matter.
        cfg = replace(self.optim, warmup_steps=0, total_steps=None) if self.trainer.fast_dev_run else self.optim
        scheduler = build_scheduler(optimizer, cfg, self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_end(self) -> None:
        # on_fit_end, not on_train_end: a run resumed from a checkpoint taken at max_steps trains no step and
        # skips on_train_end, but must still export (e.g. the first run died between its last step and the export).
        if self.trainer.fast_dev_run:
            return
        # Collective calls (log_dir is broadcast from rank 0; FSDP gathers the state): every rank makes them.
        target = Path(self.export_dir or Path(self.trainer.log_dir or self.trainer.default_root_dir) / "model")
        sharded = isinstance(self.trainer.strategy, FSDPStrategy)
        state = _full_state_dict(self.trainer.strategy, self._scalars) if sharded else None
        if self.trainer.is_global_zero:
            self.export(target, state)
        self.trainer.strategy.barrier("export")

    def export(self, target: str | Path | None = None, state: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the trained ClapModel with ``save_pretrained`` to ``target`` (default: ``export_dir``).

        Args:
            state: The LightningModule's full state dict, for sharded (FSDP) training: the weights then go
                into a fresh model of the same config. ``None`` saves ``self.model`` as it is.
        """
        target = target or self.export_dir
        if target is None:
            raise ValueError("export: give a target folder or set export_dir")
        if state is None:
            return self.model.save_pretrained(target)
        weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        fresh = ClapModel(self.model.config, pretrained=False, root=self._root)
        load_state(fresh, weights, "trained weights")
        return fresh.save_pretrained(target)


class ClapDataModule(pl.LightningDataModule):
    """Batches from clapkit shards; rate, clip length and padding come from the model's audio config.

    Args:
        train_shards: Shard folder, manifest, brace pattern (``data/shard-{000000..000099}.tar``) or list.
        val_shards: The same for validation (read in order, centre crops, first caption); ``None`` = no validation.
        batch_size: Clips per batch per rank (global batch = batch_size × devices × num_nodes × accumulation).
        val_batch_size: Per-rank validation batch (default: ``batch_size``).
        num_workers: DataLoader worker processes per rank.
        resampled: Draw shards with replacement (an endless stream); required with more than one rank, so every
            rank sees the same number of batches. Use with ``trainer.max_steps`` or ``epoch_samples``.
        epoch_samples: Samples per epoch over all ranks with ``resampled``.
        shuffle_buffer: Encoded samples held for shuffling per worker.
        shuffle_initial: Samples buffered before the first one is given out.
        max_positives: Paraphrase positives kept per sample.
        max_negatives: Hard negatives kept per sample.
        other_captions_as_positives: Captions not drawn join the positives (AF-CLAP).
        counterfactuals: Read the samples' counterfactual audio (``counterfactual.flac`` members, audio-side hard
            negatives; it doubles the audio work of the samples that have one). ``None``: when the loss takes
            audio negatives (``compa_hardneg``, ``compa_modular``, ``afclap`` with ``symmetric``).
        drop_last: Drop the last, smaller batch (keeps the batch size equal across ranks).
        seed: Seed of shard order, shuffling, crops and caption choice.
        audio: ``AudioConfig`` fields to use instead of the model's (sample_rate, clip_seconds, pad).
        augment: ``clapkit.augment.AugmentConfig`` fields (``{}``: its defaults): the training clips are augmented
            after the crop, seeded by (``seed``, epoch, sample key); validation audio never is. ``None``: off.
    """

    def __init__(
        self,
        train_shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        resampled: bool = False,
        epoch_samples: int | None = None,
        shuffle_buffer: int = 1000,
        shuffle_initial: int = 100,
        max_positives: int | None = None,
        max_negatives: int | None = None,
        other_captions_as_positives: bool = False,
        counterfactuals: bool | None = None,
        drop_last: bool = True,
        seed: int = 0,
        audio: dict[str, Any] | None = None,
        augment: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_reader: ShardReader | None = None
        self.val_reader: ShardReader | None = None

    def _audio(self) -> AudioConfig:
        if self.hparams.audio:
            return AudioConfig(**self.hparams.audio)
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is None or not isinstance(getattr(module, "model", None), ClapModel):
            raise ValueError("data: no audio settings; give data.audio or train a ClapModule")
        return module.model.config.audio

    def _counterfactuals(self) -> bool:
        if self.hparams.counterfactuals is not None:
            return self.hparams.counterfactuals
        module = self.trainer.lightning_module if self.trainer is not None else None
        return "audio_negatives" in getattr(getattr(module, "loss_fn", None), "inputs", ())

    def reader_config(self, train: bool) -> ReaderConfig:
        h = self.hparams
        return ReaderConfig.for_audio(
            self._audio(),
            batch_size=h.batch_size if train else h.val_batch_size or h.batch_size,
            train=train,
            resampled=h.resampled and train,
            epoch_samples=h.epoch_samples if train else None,
            shuffle_buffer=h.shuffle_buffer,
            shuffle_initial=h.shuffle_initial,
            max_positives=h.max_positives,
            max_negatives=h.max_negatives,
            other_captions_as_positives=h.other_captions_as_positives,
            counterfactuals=self._counterfactuals(),
            drop_last=h.drop_last if train else False,
            seed=h.seed,
            augment=AugmentConfig.from_mapping(h.augment, "data.augment") if train and h.augment is not None else None,
        )

    def setup(self, stage: str) -> None:
        world = self.trainer.world_size if self.trainer is not None else 1
        if stage == "fit" and world > 1 and not self.hparams.resampled:
            raise ValueError(
                f"data: {world} ranks read shards split between them, so they can run out of batches at different "
                "steps and stall; set data.resampled: true (with trainer.max_steps or data.epoch_samples)"
            )
        if stage == "fit" and not self.hparams.train_shards:
            raise ValueError("data.train_shards: give a shard folder, manifest, brace pattern or list of shards")

    def train_dataloader(self):
        # The loader is stateful: Lightning checkpoints its epoch and position, so a resumed run reads on from there.
        self.train_reader = ShardReader(self.hparams.train_shards, self.reader_config(train=True))
        loader = self.train_reader.loader(self.hparams.num_workers, pin_memory=torch.cuda.is_available())
        if self.trainer is not None:  # the trainer fetches a batch ahead: count the batches it trained on
            loader.consumed = lambda: self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return loader

    def val_batches_per_rank(self) -> list[int] | None:
        """Validation batches each rank reads (from the manifest; ``None``: unknown or no validation shards)."""
        if not self.hparams.val_shards:
            return None
        world = self.trainer.world_size if self.trainer is not None else 1
        reader = ShardReader(self.hparams.val_shards, self.reader_config(train=False))
        return reader.batches_per_rank(world, self.hparams.num_workers)

    def val_dataloader(self):
        if not self.hparams.val_shards:
            return []
        self.val_reader = ShardReader(self.hparams.val_shards, self.reader_config(train=False))
        loader = self.val_reader.loader(self.hparams.num_workers, pin_memory=torch.cuda.is_available())
        world = self.trainer.world_size if self.trainer is not None else 1
        counts = self.val_reader.batches_per_rank(world, self.hparams.num_workers) if world > 1 else None
        if counts is not None:  # every rank runs as many batches as the largest share: the others pad
            loader.pad_to, loader.padding = max(counts), self.val_reader.padding_batch
        return loader


def _check_precision(trainer: Any) -> None:
    """Refuse ``precision: 16-mixed`` on the CPU, before any model is built.

    Lightning would train in bf16-mixed instead with a warning (float16 autocast and its gradient scaler are a
    GPU recipe), while the config, the logs and the checkpoints' hyperparameters say 16-mixed.
    """
    precision, accelerator = str(trainer.get("precision")), trainer.get("accelerator")
    on_cpu = accelerator == "cpu" or (accelerator in (None, "auto") and not torch.cuda.is_available())
    if precision in ("16-mixed", "16") and on_cpu:
        raise ValueError(
            f"trainer.precision {precision}: float16 mixed precision needs a GPU (accelerator: {accelerator}); "
            "on the CPU set trainer.precision: bf16-mixed (or 32-true)"
        )


class ClapCLI(TrainCLI):
    """LightningCLI with ``checkpoint`` (periodic + final) and ``eval`` (held-out suite) sections."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        parser.set_defaults({"checkpoint.every_n_train_steps": 1000, "checkpoint.save_last": True})
        parser.add_lightning_class_args(EvalSuite, "eval")

    def before_instantiate_classes(self) -> None:
        _check_precision(self._get(self.config, "trainer"))

    def fit(self, model: pl.LightningModule, **kwargs: Any) -> None:
        """``trainer.fit``, resuming through ``torch.load(weights_only=True)`` unless ``--weights_only false``."""
        if kwargs.get("weights_only") is None:
            kwargs["weights_only"] = True
        self.trainer.fit(model, **kwargs)


def main(args: list[str] | None = None) -> ClapCLI:
    """Run the CLI (``fit``, ``validate``, …) with ``args`` (default: the command line)."""
    # ``python -m train clap …`` hands over argv without the app name; the full argv stays in sys.argv for
    # Lightning's DDP launcher, which re-runs it in the child processes.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # Frozen towers are kept in eval mode on purpose (ClapModel.train), and the module's batch hook (keys for
    # the frozen-tower cache) is meant to run with any datamodule.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    warnings.filterwarnings("ignore", message="You have overridden `on_before_batch_transfer` in `LightningModule`")
    return ClapCLI(
        ClapModule,
        ClapDataModule,
        args=args,
        trainer_defaults={"callbacks": [SamplesPerSecond(), ReaderStats()]},
        save_config_kwargs={"overwrite": True},
    )
