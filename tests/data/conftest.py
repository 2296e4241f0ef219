"""Small seeded clip sets and shard folders for the data tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clapkit.data.inputs import InputRecord
from clapkit.data.writer import WriterConfig, write_shards

RATE = 16000  # Hz: clips are written at the shard rate, so the round trip involves no resampling


def noise(seed: int, seconds: float, rate: int = RATE) -> np.ndarray:
    """Seeded noise at half scale, float32 [T]."""
    return np.random.default_rng(seed).uniform(-0.5, 0.5, round(seconds * rate)).astype(np.float32)


def make_records(folder: Path, n: int, seconds: float = 0.25) -> list[InputRecord]:
    """``n`` wav clips of different lengths with two captions, a positive and a negative each."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        path = folder / f"clip{i}.wav"
        sf.write(path, noise(i, seconds * (1 + i % 3)), RATE)
        fields = {
            "captions": [f"sound number {i}", f"the {i}th sound"],
            "positives": [f"audio {i}"],
            "negatives": [f"not sound {i}"],
            "labels": [f"class{i % 2}"],
        }
        records.append(InputRecord(str(path), fields, origin=str(path)))
    return records


@pytest.fixture
def shard_dir(tmp_path):
    """Write ``n`` clips into shards of ``per_shard`` samples; returns (folder, records)."""

    def make(n: int = 8, per_shard: int = 4, **config):
        records = make_records(tmp_path / "clips", n)
        out = tmp_path / "shards"
        cfg = WriterConfig(sample_rate=RATE, max_count=per_shard, **config)
        write_shards(records, out, cfg, progress=False)
        return out, records

    return make


def meta_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def tone(freq: float, seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def counterfactual_listing(tmp_path):
    """A ``scenes.jsonl``-like listing: 6 tone clips, each but every third with a counterfactual tone.

    Returns (listing path, {index: (audio [T], counterfactual [T'] or None)}); lengths vary (0.3-1.2 s) so crops
    and pads both occur.
    """
    folder = tmp_path / "scenes"
    folder.mkdir()
    lines, waves = [], {}
    for i in range(6):
        audio = tone(300 + 100 * i, 0.3 + 0.3 * (i % 4))
        sf.write(folder / f"s{i}.flac", audio, RATE)
        line = {"audio": f"s{i}.flac", "captions": [f"tone {i} then more"], "negatives": [f"more then tone {i}"]}
        counterfactual = None
        if i % 3:
            counterfactual = tone(2000 + 100 * i, 0.3 + 0.3 * ((i + 1) % 4))
            sf.write(folder / f"s{i}.counterfactual.flac", counterfactual, RATE)
            line["counterfactual_audio"] = f"s{i}.counterfactual.flac"
        lines.append(json.dumps(line))
        waves[i] = (audio, counterfactual)
    listing = folder / "scenes.jsonl"
    listing.write_text("\n".join(lines) + "\n")
    return listing, waves
