"""Audio-language model training: ``python -m train lalm fit -c configs/lalm/<recipe>.yaml``.

- :class:`LalmModule` trains the ``clapkit.lalm.AudioLanguageModel`` it is given and sets the trainable parameters
  of its stage with ``configure_stage``: stage 1 the projector only; stage 2 the projector and the LLM through
  LoRA (peft) or in full, optionally with the encoder's audio tower. In a config the model is a ``class_path``:
  :class:`LalmFromParts` (:func:`build_lalm`: a fresh model from its parts' names) or :class:`LalmFromAdapter`
  (:func:`load_adapter`: an adapter folder, e.g. the stage-1 result).
- :class:`LalmDataModule` streams conversation shards (``clapkit.lalm.ConversationReader``); in stage 2 it
  mixes stage-1 and text-only conversations back in with ``clapkit.lalm.replay_mix`` against forgetting.
- :func:`main` is the LightningCLI, with the ``checkpoint`` section of the CLAP app. Checkpoints hold the
  trainable parameters only (the frozen encoder and LLM are rebuilt from the config on resume); the
  adapter is written with ``save_pretrained`` when training ends.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import webdataset as wds
from jsonargparse import class_from_function
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.strategies import FSDPStrategy
from torch.utils.data import DataLoader, IterableDataset

from clapkit.lalm import (
    BATCH_KEYS,
    DEFAULT_LLM,
    AudioLanguageModel,
    ConversationCollator,
    ConversationReader,
    LalmConfig,
    build_projector,
    configure_stage,
    load,
    load_llm,
    replay_mix,
)
from clapkit.lalm.io import SMOLLM2_GGUF, default_llm_folder
from train.callbacks import Checkpoint, ThroughputCallback
from train.clap import build_clap_model
from train.cli import TrainCLI
from train.optim import OptimConfig, build_optimizer, build_scheduler, freeze_zero_lr

__all__ = [
    "LalmDataModule",
    "LalmFromAdapter",
    "LalmFromParts",
    "LalmModule",
    "TokensPerSecond",
    "build_lalm",
    "build_llm",
    "load_adapter",
    "main",
]

_DEFAULTS = LalmConfig()  # the defaults of the settings build_lalm passes on to LalmConfig


def build_llm(spec: str | dict[str, Any], *, gguf_file: str | None = None, dtype: str | None = None):
    """An LLM and its tokenizer from a name or folder (``clapkit.lalm.load_llm``) or a random-init config.

    Args:
        spec: ``"smollm2"``, a transformers folder, a ``.gguf`` file or a cached hub id; or a dict
            ``{"config": {model_type, hidden_size, …}, "tokenizer": "smollm2" | folder, "seed": 0}`` for a
            randomly initialised model of that shape (tests, benchmarks). ``vocab_size`` defaults to the
            tokenizer's length.
        gguf_file: GGUF file inside a folder ``spec``.
        dtype: ``bfloat16`` | ``float16`` | ``float32`` (``None``: as stored).

    Returns:
        (llm, tokenizer).
    """
    if not isinstance(spec, dict):
        return load_llm(spec, gguf_file=gguf_file, dtype=dtype)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    unknown = set(spec) - {"config", "tokenizer", "seed"}
    if unknown or "config" not in spec:
        raise ValueError(
            f"model.llm: a random-init LLM is {{config: {{model_type: llama, hidden_size: …}}, tokenizer: "
            f"smollm2 | <folder>, seed: 0}}; got keys {sorted(spec)}"
        )
    source = str(spec.get("tokenizer", DEFAULT_LLM))
    if source == DEFAULT_LLM:
        tokenizer = AutoTokenizer.from_pretrained(str(default_llm_folder()), gguf_file=SMOLLM2_GGUF)
    else:
        tokenizer = AutoTokenizer.from_pretrained(source)
    fields = dict(spec["config"])
    model_type = fields.pop("model_type", "llama")
    fields.setdefault("vocab_size", len(tokenizer))
    fields.setdefault("pad_token_id", tokenizer.pad_token_id)
    fields.setdefault("eos_token_id", tokenizer.eos_token_id)
    config = AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(int(spec.get("seed", 0)))
    llm = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype) if dtype else None)
    return llm.eval(), tokenizer


def build_lalm(
    encoder: str = "clapkit-small",
    encoder_overrides: dict[str, Any] | None = None,
    encoder_pretrained: bool = True,
    llm: str | dict[str, Any] = DEFAULT_LLM,
    gguf_file: str | None = None,
    llm_dtype: str | None = None,
    projector: str = "mlp2x_gelu",
    projector_params: dict[str, Any] | None = None,
    system_prompt: str | None = _DEFAULTS.system_prompt,
    max_length: int | None = _DEFAULTS.max_length,
    max_audio_seconds: float | None = _DEFAULTS.max_audio_seconds,
    encoder_batch: int = _DEFAULTS.encoder_batch,
    max_new_tokens: int = _DEFAULTS.max_new_tokens,
    attn_implementation: str | None = _DEFAULTS.attn_implementation,
    seed: int = 0,
) -> AudioLanguageModel:
    """A fresh ``AudioLanguageModel`` (stage 1) from its parts' names.

    Args:
        encoder: Registered clapkit model or ``save_pretrained`` folder (frozen unless stage 2 unfreezes it).
        encoder_overrides: Nested config overrides of the encoder (``clapkit.create_model`` keywords).
        encoder_pretrained: Load the encoder towers' pretrained weights.
        llm: ``"smollm2"`` (packaged SmolLM2-135M-Instruct), a transformers folder / ``.gguf`` / cached hub id,
            or a random-init config dict (see :func:`build_llm`).
        gguf_file: GGUF file inside an ``llm`` folder.
        llm_dtype: ``bfloat16`` | ``float16`` | ``float32`` (``None``: as stored).
        projector: Name in ``clapkit.lalm.PROJECTORS`` (``linear``, ``mlp2x_gelu``, ``qformer``, ``xattn``).
        projector_params: Keyword arguments of the projector (``downsample``, ``num_queries``, ``every`` …).
        system_prompt: ``LalmConfig.system_prompt`` (``None``: the chat template's own default).
        max_length: ``LalmConfig.max_length``: text tokens per conversation, before audio tokens.
        max_audio_seconds: ``LalmConfig.max_audio_seconds`` [s]: longer clips are cut.
        encoder_batch: ``LalmConfig.encoder_batch``: encoder windows per forward pass.
        max_new_tokens: ``LalmConfig.max_new_tokens``: default generation length.
        attn_implementation: ``LalmConfig.attn_implementation`` (``eager`` trains faster on CPU).
        seed: Seed of the random parts (encoder heads, projector, a random-init LLM).
    """
    folder = Path(encoder).exists()
    torch.manual_seed(seed)  # random encoder heads and projector: the same on every rank and on resume
    enc, _ = build_clap_model(
        encoder, encoder_overrides, pretrained=encoder_pretrained, init_from=encoder if folder else None
    )
    enc.eval()
    model_llm, tokenizer = build_llm(llm, gguf_file=gguf_file, dtype=llm_dtype)
    torch.manual_seed(seed)
    proj = build_projector(
        projector,
        enc.sequence_dim,
        model_llm.config.hidden_size,
        num_layers=model_llm.config.num_hidden_layers,
        **(projector_params or {}),
    )
    config = LalmConfig(
        encoder=str(Path(encoder).resolve()) if folder and not encoder_overrides else enc.config.name,
        llm=llm if isinstance(llm, str) else "",  # a random-init LLM has no name: its weights are saved
        gguf_file=gguf_file,
        projector=projector,
        projector_params=dict(projector_params or {}),
        llm_dtype=llm_dtype,
        system_prompt=system_prompt,
        max_length=max_length,
        max_audio_seconds=max_audio_seconds,
        encoder_batch=encoder_batch,
        max_new_tokens=max_new_tokens,
        attn_implementation=attn_implementation,
    )
    return AudioLanguageModel(enc, proj, model_llm, tokenizer, config)


def load_adapter(directory: str) -> AudioLanguageModel:
    """An adapter folder written by ``save_pretrained`` (e.g. the stage-1 result), to train further.

    Its encoder, LLM, projector and tokenizer all come from the folder (``clapkit.lalm.load``).
    """
    return load(directory)


# The two ways to get the model in a config, as ``class_path`` / ``init_args`` of ``LalmModule``'s ``model``:
# jsonargparse's class_from_function makes each function a subclass of AudioLanguageModel whose init_args are the
# function's parameters. (load_adapter takes the folder only: when the command line switches class_path, init_args
# of the same name are carried over, and clapkit.lalm.load's encoder / llm would then override the folder's.)
LalmFromParts = class_from_function(build_lalm, AudioLanguageModel, name="LalmFromParts")
LalmFromAdapter = class_from_function(load_adapter, AudioLanguageModel, name="LalmFromAdapter")


class LalmModule(pl.LightningModule):
    """An ``AudioLanguageModel`` trained on the assistant tokens of conversations.

    Args:
        model: The model to train: in a config a ``class_path`` with its ``init_args``, either
            :class:`LalmFromParts` (the :func:`build_lalm` arguments: encoder, LLM, projector and settings) or
            :class:`LalmFromAdapter` (:func:`load_adapter`'s ``directory``: an adapter folder written by
            ``save_pretrained``, e.g. the stage-1 result).
        stage: 1 = projector only (alignment); 2 = projector + LLM (instruction tuning).
        lora: Stage 2: peft ``LoraConfig`` arguments (``{"r": 8, "lora_alpha": 16}``; all linear layers by default).
        full_llm: Stage 2: train every LLM weight instead of LoRA adapters.
        unfreeze_encoder: Stage 2: also train the encoder's audio tower and head.
        optimizer: AdamW, warmup + cosine, per-prefix learning rates (prefixes ``model.projector``,
            ``model.llm``, ``model.encoder``).
        export_dir: Where the adapter is written when training ends (default: ``<default_root_dir>/stage<N>``).
    """

    def __init__(
        self,
        model: AudioLanguageModel,
        stage: int = 1,
        lora: dict[str, Any] | None = None,
        full_llm: bool = False,
        unfreeze_encoder: bool = False,
        optimizer: OptimConfig | None = None,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(optimizer, dict):  # hparams restored from a checkpoint
            optimizer = OptimConfig(**optimizer)
        self.optim = optimizer or OptimConfig(lr=1e-3 if stage == 1 else 2e-4, weight_decay=0.0)
        self.save_hyperparameters(ignore=["model"])  # the model's own settings live in its config
        self.hparams["optimizer"] = asdict(self.optim)  # plain types: checkpoints load with weights_only
        if stage not in (1, 2):
            raise ValueError(f"model.stage must be 1 (projector only) or 2 (projector + LLM), got {stage!r}")
        if stage == 2 and lora is None and not full_llm:
            raise ValueError("model.stage 2 trains the LLM: set model.lora (e.g. {r: 8, lora_alpha: 16}) or full_llm")
        self.model = model
        self.stage = stage
        if stage == 1:
            self.counts = configure_stage(self.model, 1)
        else:
            self.counts = configure_stage(
                self.model, 2, lora=None if full_llm else lora, full_llm=full_llm, unfreeze_encoder=unfreeze_encoder
            )
        self.model.train()
        self.export_dir = export_dir
        # Checkpoints hold the trainable parameters only; the frozen ones come back from the config.
        self.strict_loading = False

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        freeze_zero_lr(self, self.optim)  # before DDP wraps the module
        if isinstance(self.trainer.strategy, FSDPStrategy):
            raise ValueError("lalm: strategy fsdp is not supported (LoRA + a 135M-1B LLM fits per GPU); use ddp")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.model.step(batch, return_logits=False).loss  # the LM head only where answers are
        size = len(batch["keys"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("lr", self.optimizers().param_groups[0]["lr"], prog_bar=True, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss = self.model.step(batch, return_logits=False).loss
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["keys"]))

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # Only the model's tensors travel; keys and metadata stay on the host.
        moved = {k: v.to(device) for k, v in batch.items() if k in BATCH_KEYS}
        return {**batch, **moved}

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self, self.optim)
        if not isinstance(self.trainer.precision_plugin, MixedPrecision):
            # Lightning's AMP plugin refuses to clip the gradients of an optimizer that unscales them itself.
            optimizer = _fused(optimizer)
        cfg = replace(self.optim, warmup_steps=0, total_steps=None) if self.trainer.fast_dev_run else self.optim
        scheduler = build_scheduler(optimizer, cfg, self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The trainable parameters and the buffers of the modules that hold them (e.g. norm statistics).
        owners = {n.rpartition(".")[0] for n, p in self.named_parameters() if p.requires_grad}
        state = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k: v for k, v in state.items() if k.rpartition(".")[0] in owners}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        missing = sorted(trainable - set(checkpoint["state_dict"]))
        if missing:
            raise ValueError(
                f"checkpoint: {len(missing)} trainable parameters are missing (e.g. {missing[:3]}); it was written "
                "by another stage or model configuration — resume with the config it was trained with"
            )

    def on_fit_end(self) -> None:
        # on_fit_end, not on_train_end: a run resumed from a checkpoint taken at max_steps trains no step and
        # skips on_train_end, but must still export (e.g. the first run died between its last step and the export).
        if self.trainer.fast_dev_run:
            return
        if self.trainer.is_global_zero:
            self.export()
        self.trainer.strategy.barrier("export")

    def export(self, target: str | Path | None = None) -> Path:
        """Write the adapter with ``save_pretrained`` (default: ``export_dir``, else ``<root>/stage<N>``)."""
        target = target or self.export_dir or Path(self.trainer.default_root_dir) / f"stage{self.stage}"
        return self.model.save_pretrained(target)


def _fused(optimizer: torch.optim.AdamW) -> torch.optim.AdamW:
    """The same AdamW groups with the fused kernel: LoRA gives ~400 small tensors, whose per-tensor update loop
    costs 3x the fused step on CPU (13 ms vs 4 ms per step for SmolLM2 at rank 8)."""
    groups = [{**group, "fused": True, "foreach": None} for group in optimizer.param_groups]
    return torch.optim.AdamW(groups, fused=True)


class _ReplayStream(IterableDataset):
    """Unbatched primary conversations mixed with replay streams by ``replay_mix``, then collated."""

    def __init__(
        self,
        primary: ConversationReader,
        replay: list[ConversationReader],
        ratio: float | list[float],
        collator: ConversationCollator,
        batch_size: int,
        seed: int,
    ) -> None:
        super().__init__()
        self.primary, self.replay, self.ratio = primary, replay, ratio
        self.collator, self.batch_size, self.seed = collator, batch_size, seed
        self.epoch = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self.epoch
        self.epoch += 1
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        streams = [r.samples(epoch) for r in self.replay]
        mixed = replay_mix(
            self.primary.samples(epoch), streams, self.ratio, wds.utils.make_seed(self.seed, epoch, rank, worker)
        )
        return iter(wds.batched(self.batch_size, collation_fn=self.collator, partial=True)(mixed))


class LalmDataModule(pl.LightningDataModule):
    """Conversation shards for the stage of the model; rate, template and audio limits come from the model.

    Args:
        stage1_shards: Alignment conversations (e.g. "<Audio> Describe the sound." → a caption): stage 1's
            training data, replayed in stage 2.
        stage2_shards: Instruction conversations (QA, multi-turn, several clips): stage 2's training data.
        text_shards: Text-only conversations, replayed in stage 2 to keep the LLM's chat skills.
        val_shards: Held-out conversations for ``val/loss`` (``None`` = no validation).
        replay_ratio: Stage 2: fraction of conversations drawn from replay (stage-1 and text-only data, split
            evenly), or one fraction per replay stream in that order; 0 = no replay.
        batch_size: Conversations per batch per rank.
        val_batch_size: Per-rank validation batch (default: ``batch_size``).
        num_workers: DataLoader worker processes per rank.
        resampled: Draw shards with replacement (an endless stream; bound it with ``trainer.max_steps``);
            required with more than one rank.
        shuffle_buffer: Conversations held for shuffling per worker.
        seed: Seed of shard order, shuffling and the replay draws.
    """

    def __init__(
        self,
        stage1_shards: str | list[str] | None = None,
        stage2_shards: str | list[str] | None = None,
        text_shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        replay_ratio: float | list[float] = 0.0,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        resampled: bool = False,
        shuffle_buffer: int = 500,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()

    def _model(self) -> AudioLanguageModel:
        module = self.trainer.lightning_module if self.trainer is not None else None
        if not isinstance(module, LalmModule):
            raise ValueError("data: LalmDataModule reads its audio and chat settings from a LalmModule")
        return module.model

    def _stage(self) -> int:
        return self.trainer.lightning_module.stage

    def _replay_sources(self) -> list[str | list[str]]:
        h = self.hparams
        return [s for s in (h.stage1_shards, h.text_shards) if s]

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        h, world = self.hparams, self.trainer.world_size
        if world > 1 and not h.resampled:
            raise ValueError(
                f"data: {world} ranks read shards split between them, so they can run out of batches at different "
                "steps and stall; set data.resampled: true (with trainer.max_steps)"
            )
        train = h.stage1_shards if self._stage() == 1 else h.stage2_shards
        if not train:
            raise ValueError(f"data.stage{self._stage()}_shards: give the conversation shards of stage {self._stage()}")
        ratios = [h.replay_ratio] if isinstance(h.replay_ratio, (int, float)) else list(h.replay_ratio)
        if self._stage() == 2 and sum(ratios) > 0 and not self._replay_sources():
            raise ValueError("data.replay_ratio > 0 but nothing to replay: set data.stage1_shards or data.text_shards")

    def _reader(self, shards: Any, train: bool, batch_size: int | None, resampled: bool) -> ConversationReader:
        model, h = self._model(), self.hparams
        collator = model.collator() if batch_size else None
        # Validation is not split across ranks: each rank takes every batch, so they all log the same number
        # of steps and the loss's reduction over ranks cannot wait on a rank that got no shard.
        return ConversationReader(
            shards, model.sample_rate, collator=collator, batch_size=batch_size or 1, train=train,
            resampled=resampled, shuffle_buffer=h.shuffle_buffer, seed=h.seed, split_ranks=train,
        )  # fmt: skip

    def _loader(self, dataset: IterableDataset) -> DataLoader:
        h = self.hparams
        pin = torch.cuda.is_available()
        return DataLoader(
            dataset, batch_size=None, num_workers=h.num_workers, pin_memory=pin, persistent_workers=h.num_workers > 0
        )

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        if self._stage() == 1:
            return self._loader(self._reader(h.stage1_shards, True, h.batch_size, h.resampled))
        ratio = h.replay_ratio if isinstance(h.replay_ratio, (int, float)) else list(h.replay_ratio)
        if not (sum(ratio) if isinstance(ratio, list) else ratio):
            return self._loader(self._reader(h.stage2_shards, True, h.batch_size, h.resampled))
        primary = self._reader(h.stage2_shards, True, None, h.resampled)
        # Replay streams are drawn with replacement, so a small replay set never runs dry.
        replay = [self._reader(s, True, None, True) for s in self._replay_sources()]
        stream = _ReplayStream(primary, replay, ratio, self._model().collator(), h.batch_size, h.seed)
        return self._loader(stream)

    def val_dataloader(self) -> DataLoader | list:
        h = self.hparams
        if not h.val_shards:
            return []
        return self._loader(self._reader(h.val_shards, False, h.val_batch_size or h.batch_size, False))


class TokensPerSecond(ThroughputCallback):
    """Training text tokens (and conversations) per second over all ranks, a rolling mean over ``window_size`` steps.

    Tokens are the conversations' text tokens (the attention mask), before audio tokens are inserted.
    """

    rate_names = (("items_per_sec", "tokens/s"), ("samples_per_sec", "samples/s"))

    def count(self, batch: Any) -> tuple[int, int]:
        return len(batch["keys"]), int(batch["attention_mask"].sum())


class LalmCLI(TrainCLI):
    """LightningCLI with the ``checkpoint`` section (periodic + final ``last.ckpt``)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        parser.set_defaults({"checkpoint.every_n_train_steps": 1000, "checkpoint.save_last": True})

    def before_fit(self) -> None:
        # One checkpoint folder per stage, so `--ckpt_path last` finds the stage's own last.ckpt.
        callback = self.trainer.checkpoint_callback
        if callback is not None and callback.dirpath is None:
            callback.dirpath = str(Path(self.trainer.default_root_dir) / "checkpoints" / f"stage{self.model.stage}")

    def fit(self, model: pl.LightningModule, **kwargs: Any) -> None:
        """``trainer.fit``, resuming through ``torch.load(weights_only=True)`` unless ``--weights_only false``."""
        if kwargs.get("weights_only") is None:
            kwargs["weights_only"] = True
        self.trainer.fit(model, **kwargs)


def main(args: list[str] | None = None) -> LalmCLI:
    """Run the CLI (``fit``, ``validate``, …) with ``args`` (default: the command line)."""
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # A frozen encoder is kept in eval mode on purpose (AudioLanguageModel.train).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    warnings.filterwarnings("ignore", message="You have overridden `transfer_batch_to_device` in `LightningModule`")
    return LalmCLI(
        LalmModule,
        LalmDataModule,
        args=args,
        trainer_defaults={"callbacks": [TokensPerSecond()]},
        save_config_kwargs={"overwrite": True},
    )
