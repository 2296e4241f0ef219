"""Model registry (``model_configs/*.json``, file stem = model name), ``create_model``, ``load``, ``save``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from clapkit.config import ModelConfig, merge
from clapkit.io import atomic_replace_dir
from clapkit.model import ClapModel

__all__ = ["create_model", "get_model_config", "list_models", "load", "register_model_config", "save_pretrained"]

CONFIG_DIR = Path(__file__).parent / "model_configs"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "clapkit"

_CONFIGS: dict[str, dict[str, Any]] = {}


def _scan() -> None:
    for path in sorted(CONFIG_DIR.glob("*.json")):
        with open(path) as f:
            _CONFIGS[path.stem] = json.load(f)


def list_models() -> list[str]:
    """Names of the registered architectures."""
    return sorted(_CONFIGS)


def register_model_config(name: str, config: dict[str, Any] | str | Path) -> None:
    """Add an architecture (a dict, or a JSON file) under ``name``."""
    if not isinstance(config, dict):
        with open(config) as f:
            config = json.load(f)
    ModelConfig.from_dict({**config, "name": name})  # validate now, not at first use
    _CONFIGS[name] = config


def get_model_config(name: str, **overrides: Any) -> ModelConfig:
    """The typed config of a registered model, with nested ``overrides`` merged in."""
    if name not in _CONFIGS:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return ModelConfig.from_dict(merge({**_CONFIGS[name], "name": name}, overrides))


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

    The folder is written under a temporary name beside the target and renamed into place
    (``clapkit.io.atomic_replace_dir``), so an interrupted save never leaves a half-written model where a
    good one was.
    """
    directory = Path(directory)
    with atomic_replace_dir(directory) as tmp:
        payload = {"format": FORMAT, "model": model.config.to_dict()}
        (tmp / CONFIG_FILE).write_text(json.dumps(payload, indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        model.text_tower.save_extra(tmp)
    return directory


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


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict ``load_state_dict`` with a readable report of missing / unexpected / mismatched keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        lines = [f"{source}: weights do not match the model architecture"]
        for title, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                lines.append(f"  {len(keys)} {title} keys: {', '.join(keys[:8])}{' …' if len(keys) > 8 else ''}")
        for k in mismatched[:8]:
            lines.append(f"  shape mismatch {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise ValueError("\n".join(lines))
    model.load_state_dict(state, strict=True)


def load(name_or_path: str | Path, *, device: str | torch.device | None = None) -> ClapModel:
    """Load a model by registered name, from a ``save_pretrained`` directory, or from another code base's checkpoint.

    A registered name builds the architecture with its pretrained towers. A directory is restored
    exactly (config, weights, tokenizer), without touching the network. A LAION-CLAP / CompA-CLAP ``.pt`` file
    or a Hugging Face ClapModel folder is converted on the fly (``clapkit.convert.load_checkpoint``).
    """
    from clapkit import convert  # imported here: convert builds on this module

    path = Path(name_or_path).expanduser()
    if convert.handles(path):
        model = convert.load_checkpoint(path)
    elif path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise ValueError(f"{path}: no {CONFIG_FILE}; expected a folder written by save_pretrained")
        config = _read_config(path)
        model = ClapModel(config, pretrained=False, root=path)
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise ValueError(f"{path}: no {WEIGHTS_FILE}")
        try:
            state = load_file(weights)
        except Exception as err:
            raise ValueError(f"{weights}: cannot read safetensors weights ({err})") from err
        load_state(model, state, str(weights))
        model.eval()
    elif str(name_or_path) in _CONFIGS:
        model = create_model(str(name_or_path)).eval()
    else:
        raise ValueError(
            f"{name_or_path}: neither a model directory nor a registered model; "
            f"registered models: {', '.join(list_models())}"
        )
    return model.to(device) if device is not None else model


_scan()
