"""``clapkit.adapt``: a tower fine-tuned on labelled clips trains only what it is told to, comes back frozen, and
is the same for the same seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clapkit.adapt import TowerAdaptConfig, adapt_audio_tower, random_crop
from clapkit.augment import AugmentConfig, Augmenter
from clapkit.config import AudioConfig, MelConfig
from clapkit.towers.aisfx import AisfxTower
from tests.conftest import TINY_RATE, tone


def _tower(seed: int = 0) -> AisfxTower:
    torch.manual_seed(seed)
    audio = AudioConfig(sample_rate=TINY_RATE, clip_seconds=0.5, hop_seconds=0.5)
    mel = MelConfig(sample_rate=TINY_RATE, n_fft=400, hop_length=160, n_mels=32, f_min=0.0, f_max=8000.0)
    return AisfxTower(audio, mel, pretrained=False, base_channels=4).eval()


def _clips() -> tuple[list[torch.Tensor], list[str]]:
    rng = np.random.default_rng(0)
    waves, labels = [], []
    for i in range(6):
        waves.append(torch.from_numpy(tone(200 + 15 * i, 0.4, TINY_RATE)))
        labels.append("low tone")
        waves.append(torch.from_numpy(rng.uniform(-0.3, 0.3, int(0.6 * TINY_RATE)).astype(np.float32)))
        labels.append("noise")
    return waves, labels


CFG = TowerAdaptConfig(steps=4, batch_size=6, seconds=0.5, train=["net.conv_block4."], lr=1e-2, autocast=False)


def test_adapt_trains_the_named_blocks_only_and_freezes_the_tower():
    tower = _tower()
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    waves, labels = _clips()
    stats = adapt_audio_tower(tower, waves, labels, TINY_RATE, CFG, augmenter=Augmenter(AugmentConfig()), seed=3)
    after = tower.state_dict()
    block4 = [k for k, p in tower.named_parameters() if k.startswith("net.conv_block4.")]
    assert block4 and all(not torch.equal(before[k], after[k]) for k in block4 if k.endswith("weight"))
    for key, value in after.items():
        if key not in block4:  # other blocks, and every batch-norm statistic (the tower trains in eval mode)
            assert torch.equal(before[key], value), key
    assert not any(p.requires_grad for p in tower.parameters()) and not tower.training
    assert stats["trained_parameters"] == sum(p.numel() for k, p in tower.named_parameters() if k in block4)
    assert stats["clips"] == 12 and stats["classes"] == 2 and stats["steps"] == 4
    assert np.isfinite(stats["final_loss"])


def test_adapt_is_the_same_for_the_same_seed_and_differs_for_another():
    waves, labels = _clips()
    runs = []
    for seed in (5, 5, 6):
        tower = _tower()
        adapt_audio_tower(tower, waves, labels, TINY_RATE, CFG, augmenter=Augmenter(AugmentConfig()), seed=seed)
        runs.append(tower.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_zero_steps_leaves_the_weights_and_freezes():
    tower = _tower()
    for param in tower.parameters():
        param.requires_grad = True
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    waves, labels = _clips()
    stats = adapt_audio_tower(tower, waves, labels, TINY_RATE, TowerAdaptConfig(steps=0, train=["net."]))
    assert stats["final_loss"] is None
    assert all(torch.equal(before[k], v) for k, v in tower.state_dict().items())
    assert not any(p.requires_grad for p in tower.parameters())


def test_bad_inputs_are_named():
    waves, labels = _clips()
    with pytest.raises(ValueError, match="'net.nope.'"):
        adapt_audio_tower(_tower(), waves, labels, TINY_RATE, TowerAdaptConfig(steps=1, train=["net.nope."]))
    bad = list(waves)
    bad[3] = bad[3].clone()
    bad[3][10] = float("nan")
    names = [f"clip{i}.flac" for i in range(len(waves))]
    with pytest.raises(ValueError, match="clip3.flac: has NaN"):
        adapt_audio_tower(_tower(), bad, labels, TINY_RATE, CFG, names=names)
    with pytest.raises(ValueError, match="at least two labels"):
        adapt_audio_tower(_tower(), waves, ["noise"] * len(waves), TINY_RATE, CFG)
    with pytest.raises(ValueError, match="non-empty mono clip"):
        adapt_audio_tower(_tower(), [torch.zeros(0), *waves[1:]], labels, TINY_RATE, CFG)
    with pytest.raises(ValueError, match="steps ≥ 0"):
        adapt_audio_tower(_tower(), waves, labels, TINY_RATE, TowerAdaptConfig(steps=-1))


def test_random_crop_repeats_short_clips_and_centres_without_a_generator():
    wave = torch.arange(10.0)
    assert torch.equal(random_crop(wave, 25, None)[:20], torch.cat([wave, wave]))
    assert torch.equal(random_crop(wave, 4, None), torch.tensor([3.0, 4.0, 5.0, 6.0]))
    crop = random_crop(wave, 4, torch.Generator().manual_seed(0))
    assert len(crop) == 4 and torch.equal(crop, torch.arange(crop[0], crop[0] + 4))
