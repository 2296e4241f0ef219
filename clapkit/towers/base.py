"""Tower interfaces shared by every encoder family, and their registries."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from clapkit.registry import Registry

__all__ = ["AUDIO_TOWERS", "TEXT_TOWERS", "AudioTower", "TextTower", "TowerOutput", "frame_mask"]


@dataclass
class TowerOutput:
    """What every tower returns.

    Attributes:
        pooled: One vector per input [B, D].
        sequence: Frame (audio) or token (text) features [B, T, D_seq].
        mask: True where ``sequence`` holds real input, False on padding [B, T].
    """

    pooled: torch.Tensor
    sequence: torch.Tensor
    mask: torch.Tensor


class AudioTower(nn.Module):
    """Waveform [B, S] at the model's rate → ``TowerOutput``.

    Subclasses set ``width`` (pooled dim) and ``seq_width`` (sequence dim) and own their front end,
    so the same waveform batch can feed any tower.
    """

    width: int
    seq_width: int

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> TowerOutput:  # pragma: no cover
        raise NotImplementedError


class TextTower(nn.Module):
    """Token ids → ``TowerOutput``; owns its tokenizer."""

    width: int
    seq_width: int

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:  # pragma: no cover
        """Texts → ``{"input_ids": [B, L], "attention_mask": [B, L]}``."""
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TowerOutput:  # pragma: no cover
        raise NotImplementedError

    def save_extra(self, directory: Path) -> None:
        """Write what ``save_pretrained`` needs beyond the weights (tokenizer, backbone config)."""


AUDIO_TOWERS: Registry[type[AudioTower]] = Registry("audio tower")
TEXT_TOWERS: Registry[type[TextTower]] = Registry("text tower")


def frame_mask(lengths: torch.Tensor | None, num_samples: int, num_frames: int, batch: int, device) -> torch.Tensor:
    """Valid-frame mask [B, num_frames] for clips with ``lengths`` real samples out of ``num_samples``."""
    if lengths is None:
        return torch.ones(batch, num_frames, dtype=torch.bool, device=device)
    valid = torch.clamp(torch.ceil(lengths.to(device).float() / num_samples * num_frames), 1, num_frames)
    return torch.arange(num_frames, device=device)[None, :] < valid[:, None]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x [B, T, D] over positions where mask [B, T] is True."""
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


def check_frames(tower: str, frames: int, limit: int, clip_seconds: float) -> None:
    if frames > limit:
        raise ValueError(
            f"{tower}: a {clip_seconds} s clip gives {frames} frames but the tower takes at most {limit}; "
            f"lower audio.clip_seconds or raise the tower's input size"
        )


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)
