import numpy as np
import torch

from clapkit.config import get_model_config
from clapkit.towers.aisfx import AisfxTower, load_aisfx_state_dict


def test_checkpoint_loads_safely_and_strictly():
    state = load_aisfx_state_dict()
    assert "conv_block1.conv1.weight" in state and len(state) > 20
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_tower_pooled_equals_the_package_model():
    """On one 100-frame block the tower's max-pooled output is the package's own embedding."""
    from aisfx.models.cnn2d import EmbeddingNet

    cfg = get_model_config("clapkit-small")
    tower = AisfxTower(cfg.audio, cfg.frontend, pretrained=True).eval()
    # The package's own loader calls torch.load without weights_only (refused by torch >= 2.6), so the
    # reference is its network class with the checkpoint loaded by clapkit's safe loader.
    reference = EmbeddingNet("max", 3, 1, 64).eval()
    reference.load_state_dict(load_aisfx_state_dict())
    samples = 99 * 1024  # 100 STFT frames with center=True
    wave = torch.from_numpy(np.random.default_rng(0).standard_normal((2, samples)).astype(np.float32) * 0.1)
    with torch.no_grad():
        out = tower(wave)
        peak = wave.abs().amax(dim=-1, keepdim=True)
        ref = reference(tower.frontend(wave / peak))  # package forward: [B, time, freq] in, max over time
    assert out.pooled.shape == ref.shape == (2, 512)
    assert torch.allclose(out.pooled, ref, atol=1e-5)
    assert out.sequence.shape == (2, 100 // 8, 512)


def test_padding_frames_are_masked_out_of_the_pool():
    cfg = get_model_config("clapkit-small")
    tower = AisfxTower(cfg.audio, cfg.frontend, pretrained=True).eval()
    x = torch.randn(1, 44100) * 0.1
    padded = torch.nn.functional.pad(x, (0, 44100))
    with torch.no_grad():
        out = tower(padded, lengths=torch.tensor([44100]))
    assert out.mask.sum() < out.mask.numel()
    assert torch.equal(out.pooled[0], out.sequence[0][out.mask[0]].amax(dim=0))
