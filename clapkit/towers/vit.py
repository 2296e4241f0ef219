"""Spectrogram ViT audio tower (AST-style): timm's VisionTransformer over a one-channel log-mel."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from clapkit.accel.onednn import onednn_linears
from clapkit.config import AudioConfig, MelConfig
from clapkit.features import LogMel
from clapkit.towers.base import AUDIO_TOWERS, AudioTower, TowerOutput, frame_mask


@AUDIO_TOWERS.register("vit")
class ViTTower(AudioTower):
    """Patches of the (freq × time) log-mel image through a timm ViT.

    The log-mel is normalised per mel bin by a BatchNorm (as HTSAT does) before patching, so the
    tower is independent of the dB scale of the front end.

    Args:
        patch_size: Square patch side in (mel bins, frames).
        embed_dim, depth, num_heads, mlp_ratio: timm ``VisionTransformer`` shape.
    """

    def __init__(
        self,
        audio: AudioConfig,
        frontend: MelConfig | None,
        pretrained: bool = False,
        patch_size: int = 16,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if frontend is None:
            raise ValueError("vit tower needs a 'frontend' mel config in the model config")
        self.frontend = LogMel(frontend)
        self.norm = nn.BatchNorm1d(frontend.n_mels)
        frames = self.frontend.num_frames(audio.clip_samples)
        self.vit = VisionTransformer(
            img_size=(frontend.n_mels, frames),
            patch_size=patch_size,
            in_chans=1,
            num_classes=0,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
            global_pool="token",
        )
        self.grid = self.vit.patch_embed.grid_size  # (freq patches, time patches)
        self.width = self.seq_width = embed_dim

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> TowerOutput:
        mel = self.norm(self.frontend(wave).transpose(1, 2))  # [B, n_mels, frames]
        with onednn_linears(mel):
            tokens = self.vit.forward_features(mel.unsqueeze(1))  # [B, 1 + F'·T', D]
            pooled = self.vit.forward_head(tokens, pre_logits=True)  # [B, D] (CLS)
        patches = tokens[:, self.vit.num_prefix_tokens :]
        seq = patches.view(patches.shape[0], *self.grid, -1).mean(dim=1)  # [B, T', D]
        mask = frame_mask(lengths, wave.shape[-1], seq.shape[1], wave.shape[0], wave.device)
        return TowerOutput(pooled=pooled, sequence=seq, mask=mask)
