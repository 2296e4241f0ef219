"""The index folder: atomic saves, read-only loading, corrupt folders."""

from __future__ import annotations

import faiss
import pytest

from clapkit.index import AudioIndex
from tests.index.conftest import clustered


def test_save_is_atomic(tmp_path, monkeypatch):
    x = clustered(20)
    AudioIndex.build(x, index="flat").save(tmp_path / "ix")

    def broken(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        AudioIndex.build(x[:5], index="flat").save(tmp_path / "ix")
    assert len(AudioIndex.load(tmp_path / "ix")) == 20  # the old index is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]  # no temporary folders left


def test_read_only_and_corrupt_folders(tmp_path):
    x = clustered(20)
    AudioIndex.build(x, index="flat").save(tmp_path / "ix")
    ro = AudioIndex.load(tmp_path / "ix", read_only=True)
    assert len(ro.search(embedding=x[0], k=3)[0]) == 3
    with pytest.raises(ValueError, match="read-only"):
        ro.add_embeddings(x[:1])
    with pytest.raises(ValueError, match="read-only"):
        ro.remove([0])
    with pytest.raises(ValueError, match="no manifest.json"):
        AudioIndex.load(tmp_path)
    (tmp_path / "ix" / "manifest.json").write_text("{")
    with pytest.raises(ValueError, match="malformed JSON"):
        AudioIndex.load(tmp_path / "ix")
    (tmp_path / "ix" / "manifest.json").write_text('{"format": "clapkit-audio-index", "version": 1}')
    with pytest.raises(ValueError, match="manifest lacks dim, metric"):
        AudioIndex.load(tmp_path / "ix")


def test_the_model_can_be_saved_with_the_index(tiny_model, tmp_path):
    index = AudioIndex.for_model(tiny_model, source="nowhere", index="flat")
    index.add_embeddings(clustered(4))
    index.save(tmp_path / "ix", with_model=True)
    loaded = AudioIndex.load(tmp_path / "ix", read_only=True)
    assert loaded.model_dir == tmp_path / "ix" / "model"
    assert loaded.load_model().embed_dim == tiny_model.embed_dim  # from the folder, not from "nowhere"
    with pytest.raises(ValueError, match="need the index's model"):
        AudioIndex.build(clustered(4), index="flat").save(tmp_path / "bare", with_model=True)
