"""Model identity: the weights hash, the manifest's model record and the checks on attach/load."""

from __future__ import annotations

import json

import pytest
import torch

from clapkit.checkpoint import weights_sha256
from clapkit.index import AudioIndex, model_info
from tests.conftest import build_tiny_model
from tests.index.conftest import DIM


def test_model_identity_is_checked(tiny_model, recordings, tmp_path):
    index = AudioIndex.for_model(tiny_model, source="somewhere", index="flat")
    index.add_audio([recordings["low"]])
    index.save(tmp_path / "ix")
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert manifest["model"]["weights_sha256"] == weights_sha256(tiny_model)
    assert manifest["dim"] == DIM and manifest["metric"] == "cosine" and manifest["index"] == "Flat"
    assert AudioIndex.load(tmp_path / "ix", model=tiny_model).model is tiny_model
    other = build_tiny_model(seed=1)
    with pytest.raises(ValueError, match="model mismatch.*rebuild the index"):
        AudioIndex.load(tmp_path / "ix", model=other)
    with pytest.raises(ValueError, match="model mismatch"):
        AudioIndex.load(tmp_path / "ix").attach(other)
    wider = build_tiny_model(embed_dim=16)
    with pytest.raises(ValueError, match="16 dims"):
        AudioIndex.load(tmp_path / "ix").attach(wider)
    assert model_info(tiny_model).weights_sha256 == manifest["model"]["weights_sha256"]


def test_weights_hash_tracks_in_place_updates():
    model = build_tiny_model()
    before = weights_sha256(model)
    assert weights_sha256(model) == before
    with torch.no_grad():
        model.logit_scale.add_(1.0)
    assert weights_sha256(model) != before
