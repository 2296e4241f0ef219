"""The reader's ``augment`` hook on real shards written by clapkit's writer: training audio is augmented, seeded by
(seed, epoch, sample key); evaluation audio never is."""

from __future__ import annotations

import pytest
import torch

from clapkit.augment import AugmentConfig, Augmenter, mix_seed
from clapkit.data.reader import ReaderConfig, ShardReader
from tests.data.conftest import RATE
from tests.data.test_reader import _config, _counterfactual_shards, _keys
from train.clap import ClapDataModule


def _augment_config() -> AugmentConfig:
    """Gain and noise always on: every clip changes, by a measurable amount."""
    cfg = AugmentConfig.from_mapping({"transforms": ["gain", "noise"], "gain": {"p": 1.0}, "noise": {"p": 1.0}})
    cfg.seed = 3
    return cfg


def _rows(batches, name="audio"):
    return {k: b[name][i] for b in batches for i, k in enumerate(b["keys"])}


def test_training_audio_is_augmented_per_seed_epoch_and_key(shard_dir):
    out, _ = shard_dir(n=7, per_shard=3)
    cfg = _augment_config()
    plain = ShardReader(out, _config(seed=5))
    augmented = ShardReader(out, _config(seed=5, augment=cfg))
    augmenter = Augmenter(cfg)
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        augmented.set_epoch(epoch)
        clean, views = list(plain), list(augmented)
        assert _keys(clean) == _keys(views)  # shuffle, crops and captions draw as before
        clean_rows, view_rows = _rows(clean), _rows(views)
        for key, row in clean_rows.items():
            assert not torch.allclose(view_rows[key], row, atol=1e-3)
            expected = augmenter(row, RATE, seed=mix_seed(5, epoch, key))
            assert torch.equal(view_rows[key], expected)  # exactly the view of (seed, epoch, key)
    augmented.set_epoch(0)
    epoch0 = _rows(list(augmented))
    augmented.set_epoch(1)
    epoch1 = _rows(list(augmented))
    assert any(not torch.equal(epoch0[k], epoch1[k]) for k in epoch0)  # another epoch, other crops and views


def test_views_do_not_depend_on_workers(shard_dir):
    out, _ = shard_dir(n=8, per_shard=2)
    config = _config(seed=1, augment=_augment_config())
    single = _rows(list(ShardReader(out, config).loader(num_workers=0)))
    workers = _rows(list(ShardReader(out, config).loader(num_workers=2)))
    assert single.keys() == workers.keys()
    assert all(torch.equal(single[k], workers[k]) for k in single)


def test_evaluation_audio_is_never_augmented(shard_dir):
    out, _ = shard_dir(n=5, per_shard=3)
    clean = list(ShardReader(out, _config(train=False)))
    reader = ShardReader(out, _config(train=False, augment=_augment_config()))
    assert reader.augmenter is None
    for a, b in zip(clean, list(reader)):
        assert torch.equal(a["audio"], b["audio"])


def test_counterfactual_gets_the_same_draws(tmp_path, counterfactual_listing):
    listing, _ = counterfactual_listing
    out = _counterfactual_shards(tmp_path, listing)
    cfg = _augment_config()
    plain = list(ShardReader(out, _config(counterfactuals=True, seed=2)))
    views = list(ShardReader(out, _config(counterfactuals=True, seed=2, augment=cfg)))
    clean_cf, view_cf = _rows(plain, "counterfactual"), _rows(views, "counterfactual")
    augmenter = Augmenter(cfg)
    for batch in plain:
        for row, key in enumerate(batch["keys"]):
            if batch["has_counterfactual"][row]:
                expected = augmenter(clean_cf[key], RATE, seed=mix_seed(2, 0, key))
                assert torch.equal(view_cf[key], expected)


def test_datamodule_builds_the_augmentation_for_training_only():
    data = ClapDataModule(audio={"sample_rate": RATE, "clip_seconds": 0.5}, augment={"noise": {"snr_db": [5, 10]}})
    train, val = data.reader_config(train=True), data.reader_config(train=False)
    assert isinstance(train.augment, AugmentConfig) and train.augment.noise.snr_db == (5.0, 10.0)
    assert val.augment is None
    assert ClapDataModule(audio={"sample_rate": RATE}).reader_config(train=True).augment is None
    bad = ClapDataModule(audio={"sample_rate": RATE}, augment={"reverb": {"wet": 1}})
    with pytest.raises(ValueError, match=r"data.augment.reverb: unknown keys \['wet'\]"):
        bad.reader_config(train=True)
    assert isinstance(ReaderConfig(augment=AugmentConfig()).augment, AugmentConfig)
