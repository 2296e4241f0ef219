"""clapkit: contrastive audio-text (CLAP) representations.

    import clapkit
    model = clapkit.load("clapkit-small")
    audio = model.embed_audio(["dog.wav", "rain.flac"])
    result = clapkit.zero_shot(model, ["dog.wav"], ["dog barking", "rain", "siren"])

Names are imported on first use, so ``import clapkit`` (and every ``clapkit`` command) stays fast and only
loads the model stack (transformers, open_clip, timm) when a model is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_audio": "clapkit.audio",
    "ModelConfig": "clapkit.config",
    "get_model_config": "clapkit.config",
    "list_models": "clapkit.config",
    "register_model_config": "clapkit.config",
    "create_model": "clapkit.factory",
    "load": "clapkit.factory",
    "save_pretrained": "clapkit.factory",
    "AudioIndex": "clapkit.index",
    "LOSSES": "clapkit.losses",
    "ClapModel": "clapkit.model",
    "DEFAULT_TEMPLATES": "clapkit.zeroshot",
    "ZeroShotResult": "clapkit.zeroshot",
    "zero_shot": "clapkit.zeroshot",
}

__all__ = [
    "DEFAULT_TEMPLATES",
    "LOSSES",
    "AudioIndex",
    "ClapModel",
    "ModelConfig",
    "ZeroShotResult",
    "create_model",
    "get_model_config",
    "list_models",
    "load",
    "load_audio",
    "register_model_config",
    "save_pretrained",
    "zero_shot",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f"clapkit.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"clapkit.{name}":
            raise
        raise AttributeError(f"module 'clapkit' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from clapkit.audio import load_audio
    from clapkit.config import ModelConfig, get_model_config, list_models, register_model_config
    from clapkit.factory import create_model, load, save_pretrained
    from clapkit.index import AudioIndex
    from clapkit.losses import LOSSES
    from clapkit.model import ClapModel
    from clapkit.zeroshot import DEFAULT_TEMPLATES, ZeroShotResult, zero_shot
