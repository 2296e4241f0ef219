"""clapkit: contrastive audio-text (CLAP) representations.

import clapkit
model = clapkit.load("clapkit-small")
audio = model.embed_audio(["dog.wav", "rain.flac"])
result = clapkit.zero_shot(model, ["dog.wav"], ["dog barking", "rain", "siren"])
"""

from clapkit.audio import load_audio
from clapkit.config import ModelConfig
from clapkit.factory import create_model, get_model_config, list_models, load, register_model_config, save_pretrained
from clapkit.model import ClapModel
from clapkit.zeroshot import DEFAULT_TEMPLATES, ZeroShotResult, zero_shot

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TEMPLATES",
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
