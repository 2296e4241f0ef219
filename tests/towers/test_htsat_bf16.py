"""The bf16 autocast inference path of an HTSAT model against its fp32 output."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY_OVERRIDES, build_tiny_model

#: The conftest tiny model with two blocks in the first two stages, so that shifted windows are covered.
DEPTHS = {"audio_tower": {"params": {**TINY_OVERRIDES["audio_tower"]["params"], "depths": [2, 2, 1]}}}


def trained_like(seed: int, wave: torch.Tensor):
    """A tiny model whose norms and attention biases are not at their init (unit BatchNorm statistics, unit
    LayerNorm gains and zero relative-position tables hide precision loss)."""
    model = build_tiny_model(seed, **DEPTHS)
    tower = model.audio_tower
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mel = tower.frontend(wave)  # [B, frames, n_mels]
        norm = tower.model.audio_encoder.batch_norm
        norm.running_mean.copy_(mel.mean(dim=(0, 1)) + 2.0 * torch.randn(mel.shape[-1], generator=generator))
        norm.running_var.copy_(mel.var(dim=(0, 1)) * torch.empty(mel.shape[-1]).uniform_(0.5, 2.0, generator=generator))
        for name, param in tower.named_parameters():
            if "relative_position_bias_table" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
            elif "norm" in name:  # LayerNorm and BatchNorm affine parameters
                param.add_(0.3 * torch.randn(param.shape, generator=generator))
    return model


def clips(batch: int, samples: int) -> torch.Tensor:
    """Noise plus a tone per clip [B, S]."""
    generator = torch.Generator().manual_seed(1)
    t = torch.arange(samples) / 16000
    tones = 0.3 * torch.sin(2 * torch.pi * torch.linspace(200, 3000, batch)[:, None] * t)
    return tones + 0.05 * torch.randn(batch, samples, generator=generator)


@pytest.mark.parametrize("seed", [0, 1])
def test_bf16_audio_embeddings_match_fp32(seed):
    wave = clips(6, 16000)
    model = trained_like(seed, wave)
    with torch.inference_mode():
        ref = model.encode_audio(wave)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.encode_audio(wave)
    assert out.dtype == torch.float32
    assert not torch.allclose(out, ref, atol=1e-6)  # bf16 really ran
    # Unit norm, so that plain dot products with fp32 embeddings are cosines.
    assert torch.allclose(out.norm(dim=-1), torch.ones(len(out)), atol=1e-5)
    assert float((out * ref).sum(-1).min()) >= 0.999
