"""Shared fixtures: tiny models built from the registered architectures, seeded audio, offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import soundfile as sf
import torch

import clapkit

# `make test` runs the suite in pytest-xdist workers (one per core). Each worker and the processes its tests start
# get their share of the cores: torch's intra-op threads of one worker spinning against another's make both
# several times slower.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = max(1, len(os.sched_getaffinity(0)) // _WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
    torch.set_num_threads(_THREADS)

TINY_RATE = 16000  # Hz

#: A ~1 M-parameter HTSAT + CLIP-text model: 1 s clips at 16 kHz, 16 mels.
TINY_OVERRIDES = {
    "embed_dim": 32,
    "audio": {"sample_rate": TINY_RATE, "clip_seconds": 1.0, "hop_seconds": 0.5},
    "frontend": {
        "sample_rate": TINY_RATE,
        "n_fft": 400,
        "hop_length": 160,
        "n_mels": 16,
        "f_min": 0.0,
        "f_max": 8000.0,
    },
    "audio_tower": {
        "params": {
            "patch_embeds_hidden_size": 16,
            "depths": [1, 1, 1],
            "num_attention_heads": [1, 2, 2],
            "window_size": 4,
            "spec_size": 64,
            "hidden_size": 64,
        }
    },
    "text_tower": {"params": {"width": 32, "heads": 2, "layers": 1, "context_length": 32}},
    "audio_projection": {"hidden": 32},
    "text_projection": {"hidden": 32},
}


def build_tiny_model(seed: int = 0, **overrides) -> clapkit.ClapModel:
    torch.manual_seed(seed)
    cfg = clapkit.config.merge(TINY_OVERRIDES, overrides)
    return clapkit.create_model("htsat-tiny", pretrained=False, **cfg).eval()


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_model() -> clapkit.ClapModel:
    """A tiny random HTSAT + CLIP-text model (shared; do not train it in place)."""
    return build_tiny_model()


def tone(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def wav_file(tmp_path):
    """Factory: write a tone to a wav/flac file and return its path."""

    def make(name: str = "clip.wav", seconds: float = 1.0, rate: int = TINY_RATE, freq: float = 440.0, channels=1):
        data = tone(freq, seconds, rate)
        if channels > 1:
            data = np.stack([data] * channels, axis=1)
        path = tmp_path / name
        sf.write(path, data, rate)
        return path

    return make
