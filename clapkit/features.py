"""Log-mel front ends as ``nn.Module``s, so they run on the model's device and in its dtype policy."""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from clapkit.config import MelConfig

__all__ = ["LAION_PRESET", "LogMel"]

#: LAION-CLAP's 48 kHz front end (HTSAT towers): n_fft 1024, hop 480 (10 ms), 64 Slaney mels, 50–14000 Hz.
LAION_PRESET = MelConfig()

_LOGS = ("db", "ln", "log10p")
_NORMS = ("slaney", "l1", None)


class LogMel(nn.Module):
    """Waveform [B, T] → log-mel [B, frames, n_mels].

    The STFT is torchaudio's ``Spectrogram``; the filterbank is torchaudio's ``melscale_fbanks``. They
    always run in float32 (autocast is disabled inside): half-precision FFTs lose the low-energy bins
    that the log then exposes.
    """

    def __init__(self, cfg: MelConfig) -> None:
        super().__init__()
        if cfg.log not in _LOGS:
            raise ValueError(f"unknown log type {cfg.log!r}; valid: {', '.join(_LOGS)}")
        if cfg.norm not in _NORMS:
            raise ValueError(f"unknown mel norm {cfg.norm!r}; valid: slaney, l1, null")
        self.cfg = cfg
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=cfg.n_fft,
            win_length=cfg.win_length,
            hop_length=cfg.hop_length,
            power=cfg.power,
            center=cfg.center,
            pad_mode=cfg.pad_mode,
        )
        fb = torchaudio.functional.melscale_fbanks(
            n_freqs=cfg.n_fft // 2 + 1,
            f_min=cfg.f_min,
            f_max=cfg.f_max if cfg.f_max is not None else cfg.sample_rate / 2,
            n_mels=cfg.n_mels,
            sample_rate=cfg.sample_rate,
            norm="slaney" if cfg.norm == "slaney" else None,
            mel_scale=cfg.mel_scale,
        )  # [n_freqs, n_mels]
        if cfg.norm == "l1":
            fb = fb / fb.sum(dim=0, keepdim=True).clamp_min(1e-12)
        self.register_buffer("fb", fb, persistent=False)

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` input samples."""
        if self.cfg.center:
            return num_samples // self.cfg.hop_length + 1
        return (num_samples - self.cfg.n_fft) // self.cfg.hop_length + 1

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        with torch.autocast(device_type=wave.device.type, enabled=False):
            spec = self.spectrogram(wave.float())  # [B, n_freqs, frames]
            mel = torch.matmul(spec.transpose(-1, -2), self.fb)  # [B, frames, n_mels]
            if cfg.log == "db":
                mel = 10.0 * torch.log10(mel.clamp_min(cfg.amin))
                if cfg.top_db is not None:
                    mel = torch.maximum(mel, mel.amax(dim=(-2, -1), keepdim=True) - cfg.top_db)
            elif cfg.log == "ln":
                mel = torch.log(mel + cfg.amin)
            else:
                mel = torch.log10(mel * cfg.log_mult + 1.0)
            if cfg.out_scale != 1.0:
                mel = mel / cfg.out_scale
        return mel.contiguous()
