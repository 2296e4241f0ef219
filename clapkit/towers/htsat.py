"""HTSAT audio tower: transformers' ``ClapAudioModel`` (the LAION-CLAP audio encoder) on a log-mel."""

from __future__ import annotations

from typing import Any

import torch
from transformers import ClapAudioConfig, ClapAudioModel

from clapkit.accel.htsat import enable_fast_htsat
from clapkit.config import AudioConfig, MelConfig
from clapkit.features import LogMel
from clapkit.towers.base import AUDIO_TOWERS, AudioTower, TowerOutput, check_frames, frame_mask


@AUDIO_TOWERS.register("htsat")
class HTSATTower(AudioTower):
    """Swin-transformer audio encoder (HTSAT), non-fusion.

    Args:
        audio: The model's audio policy (rate and clip length).
        frontend: Log-mel config; ``n_mels`` becomes HTSAT's ``num_mel_bins``.
        pretrained: Unused (HTSAT weights come from converted checkpoints, see ``clapkit.convert``).
        fast: Run the encoder through ``clapkit.accel.htsat`` (same weights and outputs, less copying,
            oneDNN GEMMs on CPU); False keeps transformers' own forward.
        **hf_config: ``transformers.ClapAudioConfig`` fields (depths, num_attention_heads, spec_size, …).
    """

    def __init__(
        self,
        audio: AudioConfig,
        frontend: MelConfig | None,
        pretrained: bool = False,
        fast: bool = True,
        **hf_config: Any,
    ):
        super().__init__()
        if frontend is None:
            raise ValueError("htsat tower needs a 'frontend' mel config in the model config")
        if hf_config.get("enable_fusion"):
            raise ValueError("htsat tower: fusion models (enable_fusion=true) are not supported; use an unfused model")
        self.frontend = LogMel(frontend)
        self.hf_config = ClapAudioConfig(num_mel_bins=frontend.n_mels, enable_fusion=False, **hf_config)
        self.model = ClapAudioModel(self.hf_config)
        if fast:
            enable_fast_htsat(self.model)
        c = self.hf_config
        self.width = self.seq_width = int(c.patch_embeds_hidden_size * 2 ** (len(c.depths) - 1))
        freq_ratio = c.spec_size // c.num_mel_bins
        check_frames(
            "htsat", self.frontend.num_frames(audio.clip_samples), c.spec_size * freq_ratio, audio.clip_seconds
        )

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> TowerOutput:
        mel = self.frontend(wave)  # [B, frames, n_mels]
        out = self.model(input_features=mel.unsqueeze(1))
        seq = out.last_hidden_state.mean(dim=2).transpose(1, 2)  # [B, C, F', T'] → [B, T', C]
        mask = frame_mask(lengths, wave.shape[-1], seq.shape[1], wave.shape[0], wave.device)
        return TowerOutput(pooled=out.pooler_output, sequence=seq, mask=mask)
