"""Frozen-tower caches: the on-disk store exact against the model's own embeddings, save/load, merge; the
in-training cache's hits, limits and padding, the same as the store's."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

import clapkit
from clapkit.cache import (
    FeatureStore,
    TowerCache,
    audio_features,
    embed_audio_features,
    embed_text_features,
    file_windows,
    pad_trimmed,
    text_features,
    waveform_keys,
)
from clapkit.towers import TowerOutput
from tests.conftest import TINY_RATE, build_tiny_model, tone

HEAD = {"layers": 1, "width": 16, "heads": 2, "max_len": 64, "pool": "cls", "dropout": 0.0}


@pytest.fixture(scope="module")
def frozen_model():
    frozen = {"audio_tower": {"freeze": True}, "text_tower": {"freeze": True}}
    return build_tiny_model(**frozen, audio_head=HEAD, text_head=HEAD, audio={"pad": "zero"})


@pytest.fixture
def clips(tmp_path):
    paths = []
    for i, seconds in enumerate((0.3, 1.0, 0.55)):
        path = tmp_path / f"c{i}.wav"
        sf.write(path, tone(300 + 200 * i, seconds, TINY_RATE), TINY_RATE)
        paths.append(str(path))
    return paths


def test_stored_path_equals_embed_audio_and_embed_text(frozen_model, clips):
    store = audio_features(frozen_model, file_windows(clips, frozen_model.config.audio, batch_size=2))
    assert store.keys == clips
    stored = embed_audio_features(frozen_model, store, clips)
    np.testing.assert_allclose(stored, frozen_model.embed_audio(clips), atol=1e-5)
    texts = ["a tone", "a much longer caption about a tone and then another tone", "tone"]
    text = text_features(frozen_model, texts, batch_size=2)
    stored = embed_text_features(frozen_model, text, texts)
    np.testing.assert_allclose(stored, frozen_model.embed_text(texts), atol=1e-5)


def test_batch_pads_to_the_longest_and_masks(frozen_model, clips):
    store = audio_features(frozen_model, file_windows(clips, frozen_model.config.audio))
    out = store.batch([clips[0], clips[1]])
    short, full = int(store.lengths[0]), int(store.lengths[1])
    assert short < full and out.sequence.shape[:2] == (2, full)
    assert out.mask[0].sum() == short and out.mask[1].all()
    assert torch.all(out.sequence[0, short:] == 0)
    with pytest.raises(KeyError, match="no features for 'missing'"):
        store.batch(["missing"])


def test_save_load_merge_subset(tmp_path):
    a = FeatureStore(["x", "y"], torch.randn(2, 3), torch.randn(5, 4), torch.tensor([2, 3]))
    b = FeatureStore(["z"], torch.randn(1, 3), torch.randn(1, 4), torch.tensor([1]))
    loaded = FeatureStore.load(a.save(tmp_path / "a.safetensors"))
    assert loaded.keys == ["x", "y"] and torch.equal(loaded.sequence, a.sequence)
    merged = loaded.merge(b)
    assert merged.missing(["x", "z", "w"]) == ["w"]
    assert torch.equal(merged.batch(["z"]).sequence[0], b.sequence)
    sub = merged.subset(["y", "z"])
    assert sub.keys == ["y", "z"] and torch.equal(sub.batch(["y"]).sequence[0], a.sequence[2:])
    with pytest.raises(ValueError, match="keys in both"):
        merged.merge(b)
    with pytest.raises(ValueError, match="one row per key"):
        FeatureStore(["x"], torch.randn(1, 3), torch.randn(3, 4), torch.tensor([2]))


def test_refuses_trainable_towers_and_long_audio(clips, tmp_path):
    trainable = build_tiny_model()
    with pytest.raises(ValueError, match="freeze: true"):
        audio_features(trainable, file_windows(clips, trainable.config.audio))
    long = tmp_path / "long.wav"
    sf.write(long, tone(440, 2.5, TINY_RATE), TINY_RATE)
    with pytest.raises(ValueError, match="longer than the model's 1.0 s clip"):
        list(file_windows([str(long)], trainable.config.audio))


def _tower(pooled: torch.Tensor, sequence: torch.Tensor, lengths: torch.Tensor):
    """A stand-in frozen tower over rows of fixed outputs, recording which rows it ran."""
    mask = torch.arange(sequence.shape[1])[None, :] < lengths[:, None]
    calls = []

    def compute(indices: list[int]) -> TowerOutput:
        calls.append(indices)
        return TowerOutput(pooled[indices], sequence[indices], mask[indices])

    return compute, calls


def test_tower_cache_matches_the_store_and_counts_hits():
    g = torch.Generator().manual_seed(0)
    pooled, sequence, lengths = (
        torch.randn(3, 4, generator=g),
        torch.randn(3, 5, 2, generator=g),
        torch.tensor([2, 5, 1]),
    )
    compute, calls = _tower(pooled, sequence, lengths)
    cache = TowerCache(keep_sequence=True, dtype=torch.float32)
    first = cache(["a", "b", "c"], compute, torch.device("cpu"))
    again = cache(["c", "a"], compute, torch.device("cpu"))
    assert calls == [[0, 1, 2]] and (cache.hits, cache.misses) == (2, 3)
    store = FeatureStore.from_outputs(["a", "b", "c"], [first], torch.float32)
    for keys, out in ((["a", "b", "c"], first), (["c", "a"], again)):
        expected = store.batch(keys)
        for name in ("pooled", "sequence", "mask"):
            assert torch.equal(getattr(out, name), getattr(expected, name)), name
    assert torch.equal(again.sequence[0, :1], sequence[2, :1]) and again.mask.tolist() == [[1, 0], [1, 1]]


def test_tower_cache_limit_and_pooled_only_placeholder():
    g = torch.Generator().manual_seed(1)
    compute, calls = _tower(torch.randn(3, 4, generator=g), torch.randn(3, 5, 2, generator=g), torch.tensor([2, 5, 1]))
    cache = TowerCache(keep_sequence=False, max_items=2, dtype=torch.float16)
    out = cache(["a", "b", "c"], compute, torch.device("cpu"))
    assert len(cache) == 2 and out.pooled.dtype == torch.float32
    assert out.sequence.shape == (3, 1, 1) and out.mask.all()
    cache(["c"], compute, torch.device("cpu"))
    assert calls == [[0, 1, 2], [0]]  # "c" came after the cache was full: computed again


def test_pad_trimmed_zero_pads_and_masks():
    out = pad_trimmed(torch.ones(2, 3, dtype=torch.float16), [torch.ones(1, 2), torch.ones(3, 2)], None)
    assert out.pooled.dtype == out.sequence.dtype == torch.float32
    assert out.mask.tolist() == [[True, False, False], [True, True, True]]
    assert torch.equal(out.sequence.sum(-1), 2 * out.mask.float())


def test_waveform_keys_hash_content_and_length():
    wave = torch.zeros(2, 8)
    wave[1, 0] = 1.0
    plain = waveform_keys(wave)
    assert plain[0] != plain[1] and plain == waveform_keys(wave.clone())
    assert waveform_keys(wave, torch.tensor([8, 8]))[0] != waveform_keys(wave, torch.tensor([4, 8]))[0]


def test_tower_autocast_runs_in_bf16_and_the_store_follows(clips, tmp_path):
    frozen = {"audio_tower": {"freeze": True, "autocast": "bfloat16"}, "text_tower": {"freeze": True}}
    model = build_tiny_model(**frozen, audio_head=HEAD, text_head=HEAD, audio={"pad": "zero"})
    seen: list[torch.dtype] = []
    hook = model.audio_tower.register_forward_hook(lambda mod, args, out: seen.append(out.pooled.dtype))
    try:
        store = audio_features(model, file_windows(clips, model.config.audio, batch_size=2))
    finally:
        hook.remove()
    # The tower ran under bf16 autocast, its outputs come back (and are stored) in float32.
    assert seen and set(seen) == {torch.bfloat16}
    assert store.batch(clips[:1]).pooled.dtype == torch.float32
    # The model's own embed_audio runs the tower the same way: the stored path matches it ...
    stored = embed_audio_features(model, store, clips)
    np.testing.assert_allclose(stored, model.embed_audio(clips), atol=1e-3)
    # ... the setting survives save/load, and the float32 tower gives (slightly) different features.
    model.save_pretrained(tmp_path / "m")
    assert clapkit.load(tmp_path / "m").config.audio_tower.autocast == "bfloat16"
    model.config.audio_tower.autocast = None
    assert not np.allclose(embed_audio_features(model, store, clips), model.embed_audio(clips), atol=1e-6)


def test_tower_autocast_refuses_unknown_dtypes():
    with pytest.raises(ValueError, match="autocast='int8'"):
        build_tiny_model(audio_tower={"freeze": True, "autocast": "int8"})


@pytest.mark.parametrize("keep_sequence", [True, False])
def test_tower_cache_under_cpu_bf16_autocast(keep_sequence):
    """bf16-mixed training on the CPU runs the cache inside autocast, where stacking float16 entries used to fail."""
    g = torch.Generator().manual_seed(2)
    compute, _ = _tower(torch.randn(3, 4, generator=g), torch.randn(3, 5, 2, generator=g), torch.tensor([2, 5, 1]))
    cache = TowerCache(keep_sequence=keep_sequence, dtype=torch.float16)
    plain = cache(["a", "b", "c"], compute, torch.device("cpu"))  # fills the cache outside autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = cache(["a", "b", "c"], compute, torch.device("cpu"))
    assert mixed.pooled.dtype == torch.float32 and torch.equal(mixed.pooled, plain.pooled)
    assert torch.equal(mixed.sequence, plain.sequence) and torch.equal(mixed.mask, plain.mask)
