"""Attribute scenes measured: loud/soft events a known LUFS apart, fast/slow events a known onset rate apart.

The events are synthetic but shaped like real ones (a bark: harmonics with a sharp attack and quick decay; a bell:
inharmonic partials ringing out; an engine: a sustained, modulated hum with noise; a horn: a two-tone buzz), and the
scenes are read back the way a listener would: loudness by ITU-R BS.1770 on each event's stretch, repetition rate
by counting onsets in an energy envelope — not from the composer's metadata.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from clapkit.compose import ComposerConfig, EventClip, SceneComposer, compare_compositions, hard_negatives
from clapkit.compose.waveform import loudness
from clapkit.config import from_mapping

RATE = 16000  # Hz
SWAP = {"loudly": "softly", "softly": "loudly", "rapidly": "slowly", "slowly": "rapidly"}
ADVERB = re.compile(rf"\b({'|'.join(SWAP)})\b")


def _bark(rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.35 * RATE)) / RATE
    envelope = np.minimum(t / 0.005, 1.0) * np.exp(-t / 0.07)
    voiced = sum(np.sin(2 * np.pi * 480 * k * t) / k for k in range(1, 6))
    return 0.4 * envelope * (voiced + 0.3 * rng.standard_normal(len(t)))


def _bell(rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(1.2 * RATE)) / RATE
    partials = sum(np.exp(-t / (0.5 / r)) * np.sin(2 * np.pi * 820 * r * t) / r for r in (1.0, 2.76, 5.40))
    return 0.3 * np.minimum(t / 0.002, 1.0) * partials + 1e-3 * rng.standard_normal(len(t))


def _engine(rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(2.0 * RATE)) / RATE
    hum = sum(np.sin(2 * np.pi * 55 * k * t) / k for k in range(1, 8)) * (1 + 0.4 * np.sin(2 * np.pi * 27 * t))
    noise = np.convolve(rng.standard_normal(len(t)), np.ones(8) / 8, mode="same")
    return 0.2 * hum + 0.1 * noise


def _horn(rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(1.5 * RATE)) / RATE
    buzz = np.sign(np.sin(2 * np.pi * 350 * t)) + np.sign(np.sin(2 * np.pi * 440 * t))
    return 0.25 * np.minimum(t / 0.01, 1.0) * buzz + 0.01 * rng.standard_normal(len(t))


@pytest.fixture(scope="module")
def composer() -> SceneComposer:
    rng = np.random.default_rng(0)
    makers = {"dog": _bark, "bell": _bell, "engine": _engine, "car horn": _horn}
    clips = [EventClip(make(rng).astype(np.float32), label, RATE) for label, make in makers.items()]
    return SceneComposer(clips, config=ComposerConfig(sample_rate=RATE))


def _stretch(wave: np.ndarray, event: dict) -> np.ndarray:
    return wave[int(event["onset"] * RATE) : int(event["offset"] * RATE)].astype(np.float64)


def onsets(wave: np.ndarray, frame: float = 0.01, floor_db: float = 30.0) -> np.ndarray:
    """Onset times (s): where the 10 ms energy envelope rises above its peak minus ``floor_db`` (dB)."""
    size = int(frame * RATE)
    energy = (wave[: len(wave) // size * size].reshape(-1, size) ** 2).mean(axis=1)
    level = 10 * np.log10(energy + 1e-20)
    above = level > level.max() - floor_db
    rising = np.flatnonzero(above[1:] & ~above[:-1]) + 1
    return np.concatenate([[0] if above[0] else [], rising]) * frame


def onset_rate(wave: np.ndarray) -> float:
    """Onsets per second, from the first to the last onset."""
    found = onsets(wave)
    assert len(found) >= 2, f"{len(found)} onsets; a repeated event has at least 2"
    return (len(found) - 1) / (found[-1] - found[0])


def _scenes(composer: SceneComposer, kind: str, count: int = 8) -> list:
    scenes = [composer.compose(seed, kind) for seed in range(count)]
    assert {s.events[0]["attribute"] for s in scenes} == set(
        {"attribute": ("loud", "soft"), "rate": ("fast", "slow")}[kind]
    ), "both bindings must occur among the seeds"
    return scenes


def _swap_adverbs(caption: str) -> str:
    return ADVERB.sub(lambda m: SWAP[m.group()], caption)


@pytest.mark.parametrize("seed", range(8))
def test_loud_and_soft_events_are_attribute_db_apart_in_lufs(composer, seed):
    scene = composer.compose(seed, "attribute")
    levels = {e["attribute"]: loudness(_stretch(scene.audio, e), RATE) for e in scene.events}
    assert levels["loud"] - levels["soft"] == pytest.approx(20.0, abs=0.5)
    # The counterfactual: the same events in the same places, the loudness bound the other way round.
    swapped = {e["attribute"]: loudness(_stretch(scene.counterfactual_audio, e), RATE) for e in scene.events}
    assert swapped["soft"] - swapped["loud"] == pytest.approx(20.0, abs=0.5)


def test_attribute_db_is_the_configured_contrast(composer):
    clips = [
        EventClip(w, label, RATE)
        for label, w in (("dog", _bark(np.random.default_rng(1))), ("bell", _bell(np.random.default_rng(2))))
    ]
    narrow = SceneComposer(clips, config=ComposerConfig(sample_rate=RATE, attribute_db=6.0))
    scene = narrow.compose(3, "attribute")
    levels = {e["attribute"]: loudness(_stretch(scene.audio, e), RATE) for e in scene.events}
    assert levels["loud"] - levels["soft"] == pytest.approx(6.0, abs=0.5)
    assert sorted(e["gain_db"] for e in scene.events) == [-3.0, 3.0]


@pytest.mark.parametrize("seed", range(8))
def test_fast_events_repeat_four_times_as_often_as_slow_ones(composer, seed):
    scene = composer.compose(seed, "rate")
    fast, slow = sorted(scene.events, key=lambda e: e["attribute"])
    assert (fast["attribute"], slow["attribute"]) == ("fast", "slow")
    rates = {e["attribute"]: onset_rate(_stretch(scene.audio, e)) for e in scene.events}
    assert rates["fast"] / rates["slow"] == pytest.approx(4.0, rel=0.1)
    assert rates["fast"] == pytest.approx(1 / 0.4, rel=0.1) and rates["slow"] == pytest.approx(1 / 1.6, rel=0.1)
    # Rate is the only difference: both events last as long and their repetitions are equally loud.
    assert fast["offset"] - fast["onset"] == pytest.approx(slow["offset"] - slow["onset"], abs=1e-3)
    unit = int(0.3 * RATE)  # s: the first repetition of each event
    first_units = [loudness(_stretch(scene.audio, e)[:unit], RATE) for e in scene.events]
    assert first_units[0] == pytest.approx(first_units[1], abs=1.0)
    # The counterfactual swaps the rates between the same two events.
    swapped = {e["attribute"]: onset_rate(_stretch(scene.counterfactual_audio, e)) for e in scene.events}
    assert swapped["slow"] / swapped["fast"] == pytest.approx(4.0, rel=0.1)


def test_rate_is_set_by_spacing_not_by_pitch(composer):
    scene = next(
        s for s in _scenes(composer, "rate") if s.events[0]["label"] == "bell" or s.events[1]["label"] == "bell"
    )
    bell = next(e for e in scene.events if e["label"] == "bell")
    wave = _stretch(scene.audio, bell)
    spectrum = np.abs(np.fft.rfft(wave))
    peak = np.fft.rfftfreq(len(wave), 1 / RATE)[spectrum.argmax()]
    assert peak == pytest.approx(820.0, rel=0.02)  # the bell's fundamental, untouched by the rate


@pytest.mark.parametrize("kind", ["attribute", "rate"])
def test_hard_negatives_swap_the_binding(composer, kind):
    for scene in _scenes(composer, kind):
        swapped = _swap_adverbs(scene.caption)
        assert swapped != scene.caption and scene.counterfactual_caption == swapped
        assert scene.negatives[0] == swapped  # the binding swap leads the negatives
        assert compare_compositions(scene.caption, swapped) == "different"
        assert swapped in hard_negatives(scene.caption, rules=["binding_swap"])  # the rule agrees
        # Other negatives: both events with one attribute (one each) and the bindings in the other order.
        assert len(scene.negatives) == 4
        alike = [set(ADVERB.findall(n)) for n in scene.negatives[1:] if len(set(ADVERB.findall(n))) == 1]
        assert len(alike) == 2 and alike[0] != alike[1]
        for positive in scene.positives:
            assert compare_compositions(scene.caption, positive) != "different", (scene.caption, positive)


@pytest.mark.parametrize("kind", ["attribute", "rate"])
def test_same_seed_same_attribute_scene(composer, kind):
    first, again, other = composer.compose((4, 2), kind), composer.compose((4, 2), kind), composer.compose((4, 3), kind)
    np.testing.assert_array_equal(first.audio, again.audio)
    np.testing.assert_array_equal(first.counterfactual_audio, again.counterfactual_audio)
    assert first.metadata() == again.metadata()
    assert first.metadata() != other.metadata() or not np.array_equal(first.audio, other.audio)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"attribute_db": 0.0}, "attribute_db=0.0"),
        ({"rate_factor": 1.0}, "rate_factor=1.0"),
        ({"repeat_unit_seconds": 0.4}, "fast repetitions stay apart"),
        ({"rate_period_seconds": 1.5}, "does not repeat twice"),
        ({"max_event_seconds": 1.5}, "does not repeat twice"),
    ],
)
def test_config_rejects_inaudible_contrasts(fields, message):
    with pytest.raises(ValueError, match=message):
        ComposerConfig(sample_rate=RATE, **fields)


def test_config_is_strict_and_rate_checks_follow_its_weight():
    # Short events are fine when no rate scene is asked for.
    ComposerConfig(max_event_seconds=1.5, kinds={"sequence": 1.0, "attribute": 1.0, "rate": 0.0})
    for old in ("soft_gain_db", "fast_speed", "slow_speed"):
        with pytest.raises(ValueError, match=f"unknown keys \\['{old}'\\].*attribute_db"):
            from_mapping(ComposerConfig, {old: 1.0}, "scenes.composer")
    with pytest.raises(ValueError, match="kinds"):
        ComposerConfig(kinds={"speed": 1.0})
