"""A small audio collection (tone files, a shard, a broken file), its embedding parts and a built index."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from clapkit.index import AudioIndex
from retrieval.build import build_index
from retrieval.config import BuildConfig, EmbedConfig
from retrieval.embed import embed_collection
from tests.conftest import TINY_RATE, tone

FREQS = (220, 330, 440, 660, 880, 1320)  # Hz: one file each, 0.5-1.75 s long


def sweep(seconds: float, rate: int = TINY_RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * (200 * t + 800 * t**2))).astype(np.float32)


def write_shard(path: Path, clips: list[tuple[str, np.ndarray, str]]) -> None:
    """A WebDataset shard of ``<key>.flac`` + ``<key>.json`` samples (the clapkit shard schema)."""
    with wds.TarWriter(str(path)) as w:
        for key, wave, caption in clips:
            buf = io.BytesIO()
            sf.write(buf, wave, TINY_RATE, format="FLAC")
            meta = {"captions": [caption], "labels": ["synthetic"], "negatives": ["silence"], "duration": 1.0}
            w.write({"__key__": key, "flac": buf.getvalue(), "json": json.dumps(meta).encode()})


@pytest.fixture(scope="session")
def collection(tmp_path_factory, tiny_model) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("collection")
    audio = root / "audio"
    audio.mkdir()
    for i, freq in enumerate(FREQS):
        sf.write(audio / f"tone{freq}.wav", tone(freq, 0.5 + 0.25 * i, TINY_RATE), TINY_RATE)
    sf.write(audio / "sweep.flac", sweep(3.0), TINY_RATE)
    (audio / "broken.wav").write_bytes(b"RIFF but not really audio")
    clips = [("s0", tone(500, 1.2, TINY_RATE), "a 500 Hz tone"), ("s1", sweep(1.0), "a chirp")]
    write_shard(root / "shard-000.tar", clips)
    tiny_model.save_pretrained(root / "model")
    return {"root": root, "audio": audio, "shard": root / "shard-000.tar", "model": root / "model"}


def embed_config(collection: dict[str, Path], out: Path, **kw) -> EmbedConfig:
    base = {"inputs": [str(collection["audio"]), str(collection["shard"])], "out": str(out)}
    base.update(model=str(collection["model"]), workers=0, part_size=3, batch_size=4)
    return EmbedConfig(**{**base, **kw})


@pytest.fixture(scope="session")
def index_dir(collection, tiny_model, tmp_path_factory) -> Path:
    """Parts embedded in-process, then an index built from them (flat: exact scores in the tests)."""
    root = tmp_path_factory.mktemp("built")
    embed_collection(embed_config(collection, root / "parts"), model=tiny_model)
    build_index(BuildConfig(parts=str(root / "parts"), out=str(root / "index"), index="flat"))
    return root / "index"


@pytest.fixture(scope="session")
def served_index(index_dir, tiny_model) -> AudioIndex:
    return AudioIndex.load(index_dir, model=tiny_model, read_only=True)
