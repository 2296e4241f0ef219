"""The ways in to a model: ``create_model`` (a registered architecture), ``load`` and ``save_pretrained``.

The architectures themselves are registered in ``clapkit.config`` (``list_models``, ``get_model_config``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from clapkit import convert
from clapkit.checkpoint import load_state, read_safetensors
from clapkit.config import ModelConfig, get_model_config, list_models
from clapkit.model import CONFIG_FILE, FORMAT, WEIGHTS_FILE, ClapModel

__all__ = ["create_model", "load", "save_pretrained"]


def create_model(name: str, *, pretrained: bool = True, device: str | torch.device | None = None, **overrides: Any):
    """Build a registered architecture.

    Args:
        name: One of ``list_models()``.
        pretrained: Load pretrained tower weights where the config's towers have them.
        device: Where to put the model.
        **overrides: Nested config overrides, e.g. ``embed_dim=256`` or
            ``audio_tower={"freeze": False}``.
    """
    model = ClapModel(get_model_config(name, **overrides), pretrained=pretrained)
    return model.to(device) if device is not None else model


def save_pretrained(model: ClapModel, directory: str | Path) -> Path:
    """Write ``config.json``, ``model.safetensors`` and tower files (tokenizers) to ``directory``.

    The same as ``model.save_pretrained(directory)``: the folder is replaced atomically, and ``load(directory)``
    restores the model.
    """
    return model.save_pretrained(directory)


def _read_config(directory: Path) -> ModelConfig:
    try:
        payload = json.loads((directory / CONFIG_FILE).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{directory / CONFIG_FILE}: malformed JSON ({err})") from err
    if payload.get("format") != FORMAT or "model" not in payload:
        raise ValueError(
            f"{directory / CONFIG_FILE}: not a clapkit model config (missing format/model keys); "
            "for a Hugging Face ClapModel folder use `clapkit convert`"
        )
    return ModelConfig.from_dict(payload["model"])


def _load_folder(path: Path) -> ClapModel:
    """A ``save_pretrained`` folder, restored exactly (eval mode)."""
    if not (path / CONFIG_FILE).is_file():
        raise ValueError(f"{path}: no {CONFIG_FILE}; expected a folder written by save_pretrained")
    model = ClapModel(_read_config(path), pretrained=False, root=path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise ValueError(f"{path}: no {WEIGHTS_FILE}")
    load_state(model, read_safetensors(weights), str(weights))
    return model.eval()


def load(name_or_path: str | Path, *, device: str | torch.device | None = None) -> ClapModel:
    """Load a model by registered name, from a ``save_pretrained`` directory, or from another code base's checkpoint.

    A registered name builds the architecture with its pretrained towers. A directory is restored
    exactly (config, weights, tokenizer), without touching the network. A LAION-CLAP / CompA-CLAP ``.pt`` file
    or a Hugging Face ClapModel folder is converted on the fly (``clapkit.convert.load_checkpoint``).
    """
    path = Path(name_or_path).expanduser()
    if convert.handles(path):
        model = convert.load_checkpoint(path)
    elif path.is_dir():
        model = _load_folder(path)
    elif str(name_or_path) in list_models():
        model = create_model(str(name_or_path)).eval()
    else:
        raise ValueError(
            f"{name_or_path}: neither a model directory nor a registered model; "
            f"registered models: {', '.join(list_models())}"
        )
    return model.to(device) if device is not None else model
