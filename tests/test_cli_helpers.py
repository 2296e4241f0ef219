"""Shared CLI helpers: ``--precision`` names and loading a model with a warning for architecture names."""

from __future__ import annotations

import pytest
import torch

from clapkit.cli_helpers import UntrainedModelWarning, load_model, parse_dtype
from tests.conftest import build_tiny_model
from tests.index.conftest import register_tiny_architecture


def test_parse_dtype_names():
    assert parse_dtype(None) is None
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("fp16") is torch.float16


@pytest.mark.parametrize("name", ["fp64", "bfloat16", ""])
def test_parse_dtype_rejects_unknown_names(name):
    with pytest.raises(ValueError, match=rf"precision {name!r}: valid precisions are bf16, fp16"):
        parse_dtype(name)


def test_load_model_warns_for_an_architecture_name(monkeypatch, tmp_path, recwarn):
    name = register_tiny_architecture(monkeypatch)
    with pytest.warns(UntrainedModelWarning, match="randomly initialised.*not meaningful.*save_pretrained folder"):
        load_model(name)
    build_tiny_model().save_pretrained(tmp_path / "trained")
    recwarn.clear()
    load_model(tmp_path / "trained")
    assert not [w for w in recwarn if issubclass(w.category, UntrainedModelWarning)]
