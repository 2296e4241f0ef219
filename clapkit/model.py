"""``ClapModel``: audio tower + text tower (+ optional trainable heads) + projections + logit scale."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from clapkit import audio as audio_io
from clapkit.accel.precision import autocast
from clapkit.checkpoint import write_safetensors
from clapkit.config import ModelConfig, ProjectionConfig
from clapkit.io import atomic_replace_dir
from clapkit.progress import progress_bar
from clapkit.registry import Registry
from clapkit.towers import AUDIO_TOWERS, TEXT_TOWERS, SequenceHead, TowerOutput

__all__ = ["CONFIG_FILE", "FORMAT", "PROJECTIONS", "WEIGHTS_FILE", "ClapModel"]

# A save_pretrained folder: CONFIG_FILE holds {"format": FORMAT, "model": ModelConfig}, WEIGHTS_FILE the state dict.
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "clapkit"

PROJECTIONS: Registry = Registry("projection")


@PROJECTIONS.register("linear")
def _linear(in_dim: int, out_dim: int, cfg: ProjectionConfig) -> nn.Module:
    return nn.Linear(in_dim, out_dim)


@PROJECTIONS.register("mlp")
def _mlp(in_dim: int, out_dim: int, cfg: ProjectionConfig) -> nn.Module:
    acts = {"relu": nn.ReLU, "gelu": nn.GELU}
    if cfg.act not in acts:
        raise ValueError(f"unknown projection activation {cfg.act!r}; valid: {', '.join(acts)}")
    hidden = cfg.hidden or out_dim
    return nn.Sequential(nn.Linear(in_dim, hidden), acts[cfg.act](), nn.Linear(hidden, out_dim))


def _unit(emb: torch.Tensor) -> torch.Tensor:
    """L2-normalise [B, D] in float32 or wider. Under bf16 autocast the projection returns bf16, whose
    normalisation leaves norms of 1 ± 3e-3: enough to pull dot products with fp32 embeddings to 0.997 although
    the directions agree to a cosine of 0.99998 (HTSAT-tiny, docs/benchmarks.md)."""
    return F.normalize(emb.to(torch.promote_types(emb.dtype, torch.float32)), dim=-1)


class ClapModel(nn.Module):
    """Contrastive audio-text model.

    Build it with ``clapkit.create_model(name)`` or ``clapkit.load(dir)``. Tensors in, tensors out:
    ``encode_audio`` takes fixed-length waveforms at ``config.audio.sample_rate``; ``embed_audio`` takes
    files or arrays of any length and handles decoding, resampling and windowing.

    Args:
        config: The architecture.
        pretrained: Load towers' pretrained weights where a tower has them (off when the whole state dict
            is about to be loaded).
        root: A ``save_pretrained`` directory, for towers that keep files there (tokenizers).
    """

    def __init__(self, config: ModelConfig, *, pretrained: bool = True, root: Path | None = None) -> None:
        super().__init__()
        self.config = config
        at, tt = config.audio_tower, config.text_tower
        self.audio_tower = AUDIO_TOWERS.get(at.name)(
            audio=config.audio, frontend=config.frontend, pretrained=pretrained, **at.params
        )
        self.text_tower = TEXT_TOWERS.get(tt.name)(pretrained=pretrained, root=root, **tt.params)
        self.audio_head = SequenceHead(self.audio_tower.seq_width, config.audio_head) if config.audio_head else None
        self.text_head = SequenceHead(self.text_tower.seq_width, config.text_head) if config.text_head else None
        audio_dim = self.audio_head.width if self.audio_head else self.audio_tower.width
        text_dim = self.text_head.width if self.text_head else self.text_tower.width
        proj = config.audio_projection
        self.audio_projection = PROJECTIONS.get(proj.type)(audio_dim, config.embed_dim, proj)
        proj = config.text_projection
        self.text_projection = PROJECTIONS.get(proj.type)(text_dim, config.embed_dim, proj)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(config.logit_scale_init)))
        for tower, cfg in ((self.audio_tower, at), (self.text_tower, tt)):
            if cfg.freeze:
                tower.requires_grad_(False)
                tower.eval()

    # ------------------------------------------------------------------ properties
    @property
    def sample_rate(self) -> int:
        return self.config.audio.sample_rate

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def sequence_dim(self) -> int:
        """Width of ``audio_sequence`` features."""
        return self.audio_head.width if self.audio_head else self.audio_tower.seq_width

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def train(self, mode: bool = True) -> ClapModel:
        """Like ``nn.Module.train``, but frozen towers stay in eval mode (BatchNorm statistics, dropout)."""
        super().train(mode)
        if self.config.audio_tower.freeze:
            self.audio_tower.eval()
        if self.config.text_tower.freeze:
            self.text_tower.eval()
        return self

    # ------------------------------------------------------------------ tensor API
    def audio_features(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> TowerOutput:
        """Tower (and head) output before projection for waveforms [B, S]."""
        out = self.run_audio_tower(wave, lengths)
        return self.audio_head(out) if self.audio_head else out

    def run_audio_tower(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> TowerOutput:
        """The audio tower on waveforms [B, S], under the autocast its config asks for (outputs in float32)."""
        dtype = self.config.audio_tower.autocast
        if dtype is None:
            return self.audio_tower(wave, lengths)
        with autocast(self.device, getattr(torch, dtype)):
            out = self.audio_tower(wave, lengths)
        return TowerOutput(out.pooled.float(), out.sequence.float(), out.mask)

    def audio_from_tower(self, tower_out: TowerOutput, normalize: bool = True) -> torch.Tensor:
        """Audio tower output (e.g. cached features of a frozen tower) → head → projection [B, D]."""
        out = self.audio_head(tower_out) if self.audio_head else tower_out
        emb = self.audio_projection(out.pooled)
        return _unit(emb) if normalize else emb

    def encode_audio(
        self, wave: torch.Tensor, normalize: bool = True, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Waveforms [B, S] at ``sample_rate`` (one clip-length window each) → embeddings [B, D]."""
        return self.audio_from_tower(self.run_audio_tower(wave, lengths), normalize)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Captions → ``{"input_ids", "attention_mask"}`` [B, L] for ``encode_text``."""
        if isinstance(texts, str):
            texts = [texts]
        return self.text_tower.tokenize(list(texts))

    def text_features(self, tokens: dict[str, torch.Tensor]) -> TowerOutput:
        """Text tower (and head) output before projection."""
        out = self.text_tower(tokens["input_ids"], tokens["attention_mask"])
        return self.text_head(out) if self.text_head else out

    def text_from_tower(self, tower_out: TowerOutput, normalize: bool = True) -> torch.Tensor:
        """Text tower output (e.g. cached features of a frozen tower) → head → projection [B, D]."""
        out = self.text_head(tower_out) if self.text_head else tower_out
        emb = self.text_projection(out.pooled)
        return _unit(emb) if normalize else emb

    def encode_text(self, tokens: dict[str, torch.Tensor] | torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Tokens (``tokenize``'s dict, or ids [B, L] with 0 as padding) → embeddings [B, D]."""
        if isinstance(tokens, torch.Tensor):
            tokens = {"input_ids": tokens, "attention_mask": (tokens != 0).long()}
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        return self.text_from_tower(self.text_tower(tokens["input_ids"], tokens["attention_mask"]), normalize)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped to ``config.logit_scale_max``."""
        return self.logit_scale.exp().clamp(max=self.config.logit_scale_max)

    def forward(
        self,
        audio: torch.Tensor,
        text: dict[str, torch.Tensor] | torch.Tensor,
        audio_lengths: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Returns ``{"audio_embeds" [B, D], "text_embeds" [B', D], "logit_scale" []}`` (normalised embeds)."""
        return {
            "audio_embeds": self.encode_audio(audio, lengths=audio_lengths),
            "text_embeds": self.encode_text(text),
            "logit_scale": self.scale(),
        }

    def audio_sequence(
        self, wave: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame features for LLM adapters, for audio of any length.

        Audio longer than one clip is cut into consecutive clip-length windows whose frames are
        concatenated in time; padding frames are masked.

        Args:
            wave: Waveforms [B, S] at ``sample_rate`` (zero-padded to a common length).
            lengths: Real samples per row [B]; ``None`` = all S.

        Returns:
            feats [B, T, sequence_dim] and mask [B, T] (True = real audio).
        """
        clip = self.config.audio.clip_samples
        batch, total = wave.shape
        if lengths is None:
            lengths = torch.full((batch,), total, dtype=torch.long)
        lengths = lengths.to(wave.device)
        windows = max(1, math.ceil(total / clip))
        wave = F.pad(wave, (0, windows * clip - total)).view(batch * windows, clip)  # [B·W, clip]
        starts = torch.arange(windows, device=wave.device) * clip
        win_len = (lengths[:, None] - starts[None, :]).clamp(0, clip).reshape(-1)  # [B·W]
        out = self.audio_features(wave, win_len.clamp_min(1))
        frames = out.sequence.shape[1]
        feats = out.sequence.reshape(batch, windows * frames, -1)
        mask = (out.mask & (win_len > 0)[:, None]).reshape(batch, windows * frames)
        return feats, mask

    # ------------------------------------------------------------------ high-level API
    @torch.inference_mode()
    def embed_audio(
        self,
        inputs: Iterable[audio_io.AudioSource] | audio_io.AudioSource,
        *,
        batch_size: int = 16,
        sample_rate: int | None = None,
        autocast_dtype: torch.dtype | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Embed files or arrays of any length: [N, D] float32, L2-normalised.

        Clips longer than ``audio.clip_seconds`` are cut into deterministic windows (``audio.hop_seconds``
        apart, the last one ending at the end); the clip embedding is the normalised mean of its window
        embeddings. Windows of all clips are batched together, so a clip's embedding does not depend on
        the other clips in the call.

        Args:
            inputs: Paths, bytes, file objects, arrays ([T] or [C, T]) or ``(array, rate)`` tuples.
            batch_size: Windows per forward pass.
            sample_rate: Rate of bare arrays (``None`` = already at the model's rate).
            autocast_dtype: e.g. ``torch.bfloat16`` for faster CPU/GPU inference.
            progress: Show a progress bar.
        """
        if isinstance(inputs, (str, Path, bytes, np.ndarray, torch.Tensor, tuple)):
            inputs = [inputs]
        cfg = self.config.audio
        was_training = self.training
        self.eval()
        sums: list[torch.Tensor] = []
        counts: list[int] = []
        pending: list[tuple[int, torch.Tensor, int]] = []  # (clip index, window [clip_samples], real samples)

        def flush() -> None:
            owners = [i for i, _, _ in pending]
            batch = torch.stack([w for _, w, _ in pending]).to(self.device)
            lengths = torch.tensor([n for _, _, n in pending], device=self.device)
            with autocast(self.device, autocast_dtype):
                emb = self.encode_audio(batch, lengths=lengths).float().cpu()
            for owner, e in zip(owners, emb):
                sums[owner] += e
            pending.clear()

        try:
            for index, source in enumerate(progress_bar(inputs, desc="embed audio", unit="clip", disable=not progress)):
                wave = audio_io.load_audio(source, cfg.sample_rate, source_rate=sample_rate)
                wins = audio_io.sliding_windows(wave, cfg.clip_samples, cfg.hop_samples, pad=cfg.pad)
                # Zero padding is masked out; repeat padding is content.
                real = min(len(wave), cfg.clip_samples) if cfg.pad == "zero" else cfg.clip_samples
                sums.append(torch.zeros(self.embed_dim))
                counts.append(len(wins))
                for w in wins:
                    pending.append((index, w, real))
                    if len(pending) == batch_size:
                        flush()
            if pending:
                flush()
        finally:
            self.train(was_training)
        if not sums:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        means = torch.stack(sums) / torch.tensor(counts, dtype=torch.float32)[:, None]
        return F.normalize(means, dim=-1).numpy()

    @torch.inference_mode()
    def embed_text(
        self,
        texts: Sequence[str] | str,
        *,
        batch_size: int = 256,
        autocast_dtype: torch.dtype | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Embed captions: [N, D] float32, L2-normalised."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"text #{i}: empty or non-string caption {t!r}")
        was_training = self.training
        self.eval()
        out = []
        try:
            for start in progress_bar(range(0, len(texts), batch_size), desc="embed text", disable=not progress):
                tokens = self.tokenize(texts[start : start + batch_size])
                with autocast(self.device, autocast_dtype):
                    out.append(self.encode_text(tokens).float().cpu())
        finally:
            self.train(was_training)
        if not out:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return torch.cat(out).numpy()

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json``, ``model.safetensors`` and tower files (tokenizers) to ``directory``.

        The folder is written under a temporary name beside the target and renamed into place
        (``clapkit.io.atomic_replace_dir``), so an interrupted save never leaves a half-written model where a
        good one was. ``clapkit.load(directory)`` restores the model.
        """
        directory = Path(directory)
        with atomic_replace_dir(directory) as tmp:
            payload = {"format": FORMAT, "model": self.config.to_dict()}
            (tmp / CONFIG_FILE).write_text(json.dumps(payload, indent=2))
            write_safetensors(self.state_dict(), tmp / WEIGHTS_FILE)
            self.text_tower.save_extra(tmp)
        return directory
