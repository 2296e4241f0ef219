"""Held-out class pairs, training scenes that avoid them, and the CompA-format benchmark writer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clapkit.compose import ComposerConfig, EventClip, SceneComposer
from clapkit.compose.benchmark import (
    COMPA_COLUMNS,
    hold_out_pairs,
    scene_pairs,
    training_records,
    write_compositional_benchmark,
    write_scenes,
)
from clapkit.compose.templates import TEMPLATES
from clapkit.evaluate import load_compa_csv, load_retrieval_set
from tests.conftest import tone

RATE = 16000
LABELS = ["dog", "bell", "cat", "rain", "siren"]


def _clips(offset: int = 0) -> list[EventClip]:
    return [
        EventClip(tone(200 + 150 * i + 37 * k, 0.4, RATE), label, sample_rate=RATE, source=f"{label}_{k + offset}")
        for i, label in enumerate(LABELS)
        for k in range(2)
    ]


# Rate scenes scaled to the short events: a 40 ms unit every 60 ms (fast) or 240 ms (slow).
CONFIG = ComposerConfig(
    sample_rate=RATE,
    max_scene_seconds=3.0,
    max_event_seconds=0.4,
    repeat_unit_seconds=0.04,
    rate_period_seconds=0.12,
)


def test_hold_out_pairs_is_seeded_and_sized():
    pairs = hold_out_pairs(LABELS, 0.3, seed=1)
    assert pairs == hold_out_pairs(reversed(LABELS), 0.3, seed=1)
    assert len(pairs) == 3 and all(a < b for a, b in pairs)
    assert pairs != hold_out_pairs(LABELS, 0.3, seed=2)
    with pytest.raises(ValueError, match="between 0 and 1"):
        hold_out_pairs(LABELS, 1.0)
    assert scene_pairs(["b", "a", "c", "a"]) == {("a", "b"), ("a", "c"), ("b", "c")}


def test_write_scenes_never_combines_a_held_out_pair(tmp_path):
    held = hold_out_pairs(LABELS, 0.3, seed=0)
    composer = SceneComposer(_clips(), config=CONFIG, pool="train")
    info = write_scenes(composer, tmp_path, 12, seed=3, avoid_pairs=held, progress=False)
    lines = [json.loads(x) for x in info["listing"].read_text().splitlines()]
    assert info["scenes"] == len(lines) == 12 and info["drawn"] == 12 + info["rejected"]
    for line in lines:
        assert not scene_pairs(e["label"] for e in line["events"]) & set(held)
        assert (tmp_path / line["audio"]).is_file() and (tmp_path / line["counterfactual_audio"]).is_file()
    # The kept scenes are the composer's own scenes for their seeds.
    first = lines[0]
    assert composer.compose(tuple(first["seed"])).caption == first["captions"][0]
    with pytest.raises(ValueError, match="avoid the held-out pairs"):
        every = [(a, b) for i, a in enumerate(LABELS) for b in LABELS[i + 1 :]]
        write_scenes(composer, tmp_path / "none", 2, avoid_pairs=every, max_tries=5, progress=False)


def test_benchmark_rows_use_held_out_pairs_and_test_phrasings(tmp_path):
    held = hold_out_pairs(LABELS, 0.3, seed=0)
    info = write_compositional_benchmark(
        _clips(offset=10),
        tmp_path,
        held,
        counts={"compa_order": 5, "compa_attribute": 3},
        config=CONFIG,
        seed=0,
        progress=False,
    )
    assert info["compa_order_rows"] == 5 and info["pool"] == "test"
    order = load_compa_csv(tmp_path / "compa_order.csv")
    attribute = load_compa_csv(tmp_path / "compa_attribute.csv")
    assert len(order) == 5 and len(attribute) == 3
    header = (tmp_path / "compa_order.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == COMPA_COLUMNS
    items = [json.loads(x) for x in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert {tuple(sorted(it["classes"])) for it in items} <= set(held)
    assert len({tuple(sorted(it["classes"])) for it in items[:3]}) == 3  # every pair before any repeats
    attribute_items = [it for it in items if it["benchmark"] == "compa_attribute"]
    assert [it["kind"] for it in attribute_items] == ["attribute", "rate", "attribute"]
    assert [e["attribute"] for e in attribute_items[1]["events"]] in (["fast", "slow"], ["slow", "fast"])
    train_glue = re.compile(r"\b(followed by|then|before|after(?! which)|while|as|together with|amidst)\b")
    for it in order:
        assert not any(train_glue.search(c.lower()) for c in it.captions), it.captions
        assert it.captions[0] != it.captions[1]
    retrieval = load_retrieval_set(tmp_path / "retrieval.jsonl")
    assert len(retrieval.audio) == 2 * (5 + 3)
    # An order pair is the same two clips in the other order: equal energy, different waveform.
    a, b = (sf.read(p)[0] for p in order[0].audio)
    assert a.shape == b.shape and not np.allclose(a, b) and np.isclose((a**2).sum(), (b**2).sum(), rtol=1e-3)
    assert set(TEMPLATES) >= {"train", "test"}


def test_training_records_pair_each_scene_with_its_counterfactual(tmp_path):
    composer = SceneComposer(_clips(), config=CONFIG, pool="train")
    info = write_scenes(composer, tmp_path, 6, seed=0, progress=False)
    scenes = [json.loads(x) for x in info["listing"].read_text().splitlines()]
    records = training_records(scenes, tmp_path, lexicon=composer.lexicon)
    assert len(records) == 12
    for scene, counter in zip(records[::2], records[1::2]):
        assert scene["role"] == "scene" and counter["role"] == "counterfactual" and scene["scene"] == counter["scene"]
        assert counter["audio"] == scene["counterfactual_audio"] and counter["counterfactual_audio"] == scene["audio"]
        assert Path(counter["audio"]).is_absolute() and Path(counter["audio"]).is_file()
        assert counter["captions"] == [scene["counterfactual_caption"]]
        assert counter["negatives"][0] == scene["captions"][0]
        assert not set(counter["positives"]) & set(counter["negatives"])
        assert counter["captions"][0] not in counter["negatives"]
    assert len(training_records(scenes, tmp_path, counterfactuals=False)) == 6
