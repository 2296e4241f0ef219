"""ComposerConfig.augment: each event of a training scene augmented after its cut, the composition unchanged, the
counterfactual hearing the same augmented events; the held-out benchmark never augmented."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import soundfile as sf

from clapkit.augment import AugmentConfig
from clapkit.compose import ComposerConfig, EventClip, SceneComposer
from clapkit.compose.benchmark import write_compositional_benchmark
from tests.compose.test_benchmark import CONFIG, LABELS, _clips
from tests.compose.test_scenes import HIGH, LOW, MID, RATE, tone

#: Every event gets white noise at 10–20 dB SNR: audible, measurable, and it leaves the tones where they were.
NOISY = AugmentConfig.from_mapping(
    {"transforms": ["noise"], "noise": {"p": 1.0, "snr_db": [10, 20], "colors": ["white"]}}
)


CLIPS = [
    EventClip(tone(LOW), "dog", RATE),
    EventClip(tone(HIGH), "bell", RATE),
    EventClip(tone(MID, 0.3), "car horn", RATE),
]


@pytest.fixture(scope="module")
def plain() -> SceneComposer:
    return SceneComposer(CLIPS, config=ComposerConfig(sample_rate=RATE))


@pytest.fixture(scope="module")
def augmented() -> SceneComposer:
    return SceneComposer(CLIPS, config=ComposerConfig(sample_rate=RATE, augment=NOISY))


def _snr_db(scene: np.ndarray, plain: np.ndarray) -> float:
    """The plain scene's energy over what augmentation added, after matching the overall level (the finished mix
    is loudness-normalised, so the added noise scales the whole scene a little)."""
    plain, scene = plain.astype(np.float64), scene.astype(np.float64)
    alpha = scene @ plain / (plain @ plain)
    return 10 * np.log10((alpha**2 * plain @ plain) / np.sum((scene - alpha * plain) ** 2))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.parametrize("kind", ["sequence", "overlap", "sequence3", "attribute"])
def test_augmented_scene_keeps_its_composition_and_is_seeded(plain, augmented, kind):
    plain, scene = plain.compose(7, kind), augmented.compose(7, kind)
    assert (scene.caption, scene.negatives, scene.positives) == (plain.caption, plain.negatives, plain.positives)
    assert scene.events == plain.events and scene.audio.shape == plain.audio.shape
    assert 9.0 < _snr_db(scene.audio, plain.audio) < 22.0  # each event's noise at 10-20 dB, none in the gaps
    again = augmented.compose(7, kind)
    assert np.array_equal(again.audio, scene.audio)
    assert np.array_equal(again.counterfactual_audio, scene.counterfactual_audio)
    assert not np.array_equal(augmented.compose(8, kind).audio[: len(scene.audio)], scene.audio)
    assert np.abs(scene.audio).max() <= augmented.config.peak + 1e-6


def test_counterfactual_hears_the_same_augmented_events(plain, augmented):
    scene = augmented.compose(3, "sequence")
    first = scene.events[0]
    length = round((first["offset"] - first["onset"]) * RATE)
    start_a = round(first["onset"] * RATE)
    event_a = scene.audio[start_a : start_a + length]
    # The counterfactual is [edge, B, gap, A, edge]: event A, with the same noise, ends where the scene's A began.
    cf = scene.counterfactual_audio
    expected = len(cf) - start_a - length
    best = max(_correlation(cf[i : i + length], event_a) for i in range(expected - 2, expected + 3))
    assert best > 0.9999  # the same samples up to the mix's level; fresh noise at 10-20 dB would give < 0.995
    unaugmented = plain.compose(3, "sequence").audio[start_a : start_a + length]
    assert _correlation(unaugmented, event_a) < 0.995


def test_benchmark_is_never_augmented(tmp_path):
    held = [("bell", "dog"), ("cat", "rain")]
    counts = {"compa_order": 2, "compa_attribute": 2}
    args = {"counts": counts, "seed": 0, "progress": False}
    write_compositional_benchmark(_clips(10), tmp_path / "plain", held, config=CONFIG, **args)
    noisy = dataclasses.replace(CONFIG, augment=NOISY)
    write_compositional_benchmark(_clips(10), tmp_path / "noisy", held, config=noisy, **args)
    files = sorted(p.relative_to(tmp_path / "plain") for p in (tmp_path / "plain" / "audio").glob("*.flac"))
    assert len(files) == 8
    for name in files:
        assert np.array_equal(sf.read(tmp_path / "plain" / name)[0], sf.read(tmp_path / "noisy" / name)[0])
    assert LABELS and ComposerConfig().augment is None
