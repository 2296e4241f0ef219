"""``features.clip_views``: augmented views of the training clips stored once next to the clean ones (view 0),
drawn among by training; held-out clips and scenes never augmented."""

from __future__ import annotations

import pytest
import torch

from clapkit.cache import FeatureStore
from demo.config import load_config
from demo.features import TrainSample, _ShardWindows, train_samples, view_key
from demo.pipeline import Demo
from demo.training import _Samples
from tests.demo.test_pipeline import _config

VIEWS = 3
AUGMENT = {"transforms": ["eq", "noise"], "eq": {"p": 1.0}, "noise": {"p": 1.0, "snr_db": [10, 20]}}


def _features(tmp, views: int) -> tuple[Demo, dict[str, FeatureStore]]:
    config = _config(tmp)
    config["features"].update(clip_views=views, augment=AUGMENT)
    demo = Demo(load_config(config), progress=False, log=lambda line: None)
    for step in (demo.dataset, demo.scenes, demo.benchmark, demo.shards, demo.features):
        step()
    folder = demo.out / "features"
    return demo, {name: FeatureStore.load(folder / f"audio_{name}.safetensors") for name in ("train", "eval")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("views")
    demo, with_views = _features(tmp, VIEWS)
    samples = train_samples(demo.work)
    _, clean = _features(tmp, 1)  # the same folder: every step but the features is reused
    return demo, samples, with_views, clean


def test_training_clips_get_views_and_scenes_do_not(runs):
    _, samples, stores, _ = runs
    clips = [s for s in samples if s.counterfactual is None]
    assert clips and all(s.views == [view_key(s.key, v) for v in range(1, VIEWS)] for s in clips)
    assert all(not s.views for s in samples if s.counterfactual is not None)  # scenes and counterfactuals
    assert len(stores["train"]) == len(samples) + (VIEWS - 1) * len(clips)


def test_view_zero_is_the_clean_window_and_other_views_differ(runs):
    _, samples, stores, clean = runs
    train, plain = stores["train"], clean["train"]
    assert sorted(plain.keys) == sorted(k for k in train.keys if "#view" not in k)
    for key in plain.keys:
        torch.testing.assert_close(train.batch([key]).pooled, plain.batch([key]).pooled, rtol=0, atol=1e-6)
    for sample in (s for s in samples if s.views):
        pooled = train.batch([sample.key, *sample.views]).pooled  # [V, D]
        assert torch.cdist(pooled, pooled).triu(1)[0, 1:].min() > 1e-4  # each view its own features
        assert torch.cdist(pooled, pooled)[1, 2] > 1e-4
    assert torch.equal(stores["eval"].pooled, clean["eval"].pooled)  # held-out clips are never augmented


def test_views_are_deterministic(runs):
    demo, _, _, _ = runs
    demo.work.config.features.clip_views = VIEWS

    def view_waves() -> dict[str, torch.Tensor]:
        return {k: w for keys, waves, _ in _ShardWindows(demo.work) for k, w in zip(keys, waves) if "#view" in k}

    first, second = view_waves(), view_waves()
    assert first.keys() == second.keys() and len(first) > 0
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_training_draws_among_the_views():
    with_views = TrainSample("train/a", ["a dog", "a puppy"], views=["train/a#view1", "train/a#view2"])
    without = TrainSample("train/a", ["a dog", "a puppy"])
    drawn = _Samples([with_views], seed=0, caption_source="all", max_negatives=2, positives=False)
    plain = _Samples([without], seed=0, caption_source="all", max_negatives=2, positives=False)
    items = [drawn[0] for _ in range(40)]
    assert {it["key"] for it in items} == {"train/a", "train/a#view1", "train/a#view2"}
    assert [it["caption"] for it in items] == [plain[0]["caption"] for _ in range(40)]  # captions draw as before
    assert {plain[0]["key"] for _ in range(5)} == {"train/a"}


def test_bad_clip_views_is_named(runs):
    demo, _, _, _ = runs
    demo.work.config.features.clip_views = 0
    try:
        with pytest.raises(ValueError, match="features.clip_views=0"):
            _ShardWindows(demo.work)
    finally:
        demo.work.config.features.clip_views = VIEWS


def test_the_cross_source_probe_trains_on_the_stored_views(runs):
    from benchmarks.probe_cross_source import training_clips

    demo, samples, stores, _ = runs
    clean_keys, clean_labels = training_clips(demo.out)
    keys, labels = training_clips(demo.out, VIEWS)
    clips = [s for s in samples if s.counterfactual is None]
    assert sorted(clean_keys) == sorted(s.key for s in clips)
    assert keys[: len(clean_keys)] == clean_keys and labels == clean_labels * VIEWS
    assert keys[len(clean_keys) :] == [view_key(k, v) for v in range(1, VIEWS) for k in clean_keys]
    assert not stores["train"].missing(keys)  # every view the probe reads is stored
