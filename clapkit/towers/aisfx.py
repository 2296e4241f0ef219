"""Pretrained sound-effects CNN from the ``aisfx`` package (CC-BY-4.0) as an audio tower.

The network is the package's own ``EmbeddingNet`` (a 4-block CNN, DCASE cross-task baseline) with its
released weights. Its preprocessing (peak-normalised waveform, 96 HTK mels with unit-sum filters, 2048 /
1024 STFT at 44.1 kHz, log10(10⁴·x + 1), scaled by the training maximum 9.4578) is reproduced on torch
by ``LogMel`` with the ``aisfx`` preset of ``model_configs/clapkit-small.json``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from clapkit.config import AudioConfig, MelConfig
from clapkit.features import LogMel
from clapkit.towers.base import AUDIO_TOWERS, AudioTower, TowerOutput, frame_mask

#: The STFT frames per output frame: three 2×2 max-pools in the CNN.
TIME_STRIDE = 8


def checkpoint_path() -> Path:
    """Where the ``aisfx`` package keeps its weights."""
    from aisfx.inference import get_path_modelWeights

    return Path(get_path_modelWeights())


def load_aisfx_state_dict(path: Path | None = None) -> dict[str, torch.Tensor]:
    """The ``embedding_net.*`` weights of the aisfx checkpoint, loaded with ``weights_only=True``.

    The checkpoint is a pickled ``(state_dict, ds_dict)`` tuple whose ``ds_dict`` holds numpy scalars:
    only those two numpy types are allowed through the safe unpickler.
    """
    path = path or checkpoint_path()
    allowed = [
        (np.core.multiarray.scalar, "numpy.core.multiarray.scalar"),
        np.dtype,
        *{type(np.dtype(t)) for t in "fdil"},
    ]
    with torch.serialization.safe_globals(allowed):
        state, _ = torch.load(path, map_location="cpu", weights_only=True)
    prefix = "embedding_net."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


@AUDIO_TOWERS.register("aisfx")
class AisfxTower(AudioTower):
    """aisfx CNN: frames are the conv map averaged over frequency, one 512-d frame per ~186 ms.

    Args:
        pretrained: Load the package's released weights (strictly).
        peak_normalize: Divide each input window by its peak, as the package does per file.
        base_channels: Channels of the first conv block (64 in the released model).
    """

    def __init__(
        self,
        audio: AudioConfig,
        frontend: MelConfig | None,
        pretrained: bool = True,
        peak_normalize: bool = True,
        base_channels: int = 64,
    ):
        super().__init__()
        from aisfx.models.cnn2d import EmbeddingNet

        if frontend is None:
            raise ValueError("aisfx tower needs a 'frontend' mel config in the model config")
        self.frontend = LogMel(frontend)
        self.peak_normalize = peak_normalize
        self.net = EmbeddingNet("max", 3, 1, base_channels)
        if pretrained:
            self.net.load_state_dict(load_aisfx_state_dict(), strict=True)
        self.width = self.seq_width = self.net.hl4

    def frames(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel [B, frames, n_mels] → conv frames [B, T', C]."""
        x = mel.unsqueeze(1)  # [B, 1, frames, n_mels]
        net = self.net
        x = net.conv_block1(x, pool_size=(2, 2), pool_type="max")
        x = net.conv_block2(x, pool_size=(2, 2), pool_type="max")
        x = net.conv_block3(x, pool_size=(2, 2), pool_type="max")
        x = net.conv_block4(x, pool_size=(1, 1), pool_type="max")  # [B, C, T', F']
        return x.mean(dim=3).transpose(1, 2)  # [B, T', C]

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> TowerOutput:
        if self.peak_normalize:
            peak = wave.abs().amax(dim=-1, keepdim=True)
            wave = wave / torch.where(peak > 0, peak, torch.ones_like(peak))
        seq = self.frames(self.frontend(wave))
        mask = frame_mask(lengths, wave.shape[-1], seq.shape[1], wave.shape[0], wave.device)
        # The package pools by max over time; padding frames are excluded from the max.
        pooled = seq.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
        return TowerOutput(pooled=pooled, sequence=seq, mask=mask)
