"""Metadata: Entry coercion, the SQLite round trip and validation of what is added."""

from __future__ import annotations

import numpy as np
import pytest

from clapkit.index import AudioIndex, Entry
from tests.index.conftest import DIM, clustered


def test_metadata_round_trip_and_validation(tmp_path):
    x = clustered(3)
    entries = [
        Entry("a.flac", 0.0, 10.0, 30.0, ["a dog barks"], ["dog"], None, {"split": "test"}),
        {"path": "s.tar", "member": "k1.flac", "captions": "rain", "labels": "weather", "site": 7},
        "c.wav",
    ]
    index = AudioIndex.build(x, entries, index="flat")
    hits = index.search(embedding=x[1], k=1)[0]
    assert hits[0].to_dict() | {"score": 0} == {
        "id": 1,
        "score": 0,
        "path": "s.tar",
        "start": 0.0,
        "end": None,
        "duration": None,
        "captions": ["rain"],
        "labels": ["weather"],
        "member": "k1.flac",
        "fields": {"site": 7},
    }
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    index.save(tmp_path / "ix")
    assert AudioIndex.load(tmp_path / "ix").get([0])[0] == Entry.coerce(entries[0], "e")
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        index.add_embeddings(x[:1], [{"path": "x", "fields": {"bad": object()}}])
    with pytest.raises(ValueError, match="one per row"):
        index.add_embeddings(x, ["only one"])
    with pytest.raises(ValueError, match=r"expected shape \[N, 32\]"):
        index.add_embeddings(np.zeros((2, 8), np.float32))
    with pytest.raises(ValueError, match="NaN/Inf"):
        index.add_embeddings(np.full((1, DIM), np.nan, np.float32))
    assert len(index) == 3  # failed adds leave nothing behind
