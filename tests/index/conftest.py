"""Shared index test data: clustered unit vectors, tone recordings, WebDataset shards."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

import clapkit
from tests.conftest import TINY_OVERRIDES, TINY_RATE, tone

DIM = 32


def clustered(n: int, dim: int = DIM, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres (fixed; ``seed`` draws the points) [n, dim]."""
    centres = np.random.default_rng(0).standard_normal((clusters, dim))
    rng = np.random.default_rng(seed + 1)
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_top(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1)[:, :k]


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec")
    files = {}
    for name, freq, seconds in (("low", 220, 0.6), ("mid", 880, 1.0)):
        files[name] = root / f"{name}.wav"
        sf.write(files[name], tone(freq, seconds, TINY_RATE), TINY_RATE)
    t = np.arange(int(3.2 * TINY_RATE)) / TINY_RATE  # a 200 Hz → 6.6 kHz sweep: every window differs
    files["long"] = root / "long.wav"
    sf.write(files["long"], (0.5 * np.sin(2 * np.pi * (200 * t + 1000 * t**2))).astype(np.float32), TINY_RATE)
    return files


def make_shard(path, clips):
    """A WebDataset shard of 1.5 s FLAC tones: ``clips`` are (key, frequency [Hz], caption)."""
    with wds.TarWriter(str(path)) as w:
        for key, freq, caption in clips:
            buf = io.BytesIO()
            sf.write(buf, tone(freq, 1.5, TINY_RATE), TINY_RATE, format="FLAC")
            meta = {"captions": [caption], "labels": ["tone"], "negatives": ["silence"], "source": "synth"}
            w.write({"__key__": key, "flac": buf.getvalue(), "json": json.dumps(meta).encode()})


def register_tiny_architecture(monkeypatch: pytest.MonkeyPatch, name: str = "tiny-untrained") -> str:
    """Register the tiny test model as an architecture name (for this test only), as ``clapkit-small`` is one:
    ``clapkit.load(name)`` then builds it with fresh random layers on every call."""
    config = json.loads((Path(clapkit.config.CONFIG_DIR) / "htsat-tiny.json").read_text())
    monkeypatch.setitem(clapkit.config._CONFIGS, name, clapkit.config.merge(config, TINY_OVERRIDES))
    return name
