"""Hugging Face ``ClapModel`` folders (``config.json`` with ``model_type: "clap"``) → clapkit ``ClapModel``.

The audio tower *is* transformers' ``ClapAudioModel`` and the text tower a ``RobertaModel`` with the same layout
as ``ClapTextModel``, so the conversion renames prefixes and rebuilds the configs: ``ClapAudioConfig`` fields
become the ``htsat`` tower's parameters, ``ClapTextConfig`` a ``RobertaConfig`` (keeping its ``layer_norm_eps``:
HF's converted LAION checkpoints use 1e-12 where LAION's RoBERTa used 1e-5), and the folder's
``ClapFeatureExtractor`` settings the log-mel front end.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch

from clapkit.checkpoint import read_safetensors, read_torch_state

__all__ = ["dropped_reason", "hf_config", "hf_state", "is_hf_clap_dir", "read_hf_weights"]

#: ``ClapAudioConfig`` fields that are not the tower's to set (it derives them) or do not shape the encoder.
_AUDIO_SKIP = {"num_mel_bins", "enable_fusion", "projection_dim", "projection_hidden_act", "initializer_factor"}
#: HF ``padding`` of the feature extractor → clapkit ``audio.pad``.
_PADS = {"repeatpad": "repeatpad", "pad": "zero"}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
_DROPPED_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")


def is_hf_clap_dir(path: Path) -> bool:
    """True for a folder whose ``config.json`` says ``model_type: "clap"``."""
    config = path / "config.json"
    if not (path.is_dir() and config.is_file()):
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == "clap"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def _init_fields(cls: type) -> list[str]:
    own = inspect.signature(cls.__init__).parameters
    generic = inspect.signature(cls.__mro__[1].__init__).parameters  # PreTrainedConfig's shared fields
    return [name for name in own if name not in generic and name != "self"]


def _audio_params(audio) -> dict[str, Any]:
    from transformers import ClapAudioConfig

    default = ClapAudioConfig()
    return {
        name: getattr(audio, name)
        for name in _init_fields(ClapAudioConfig)
        if name not in _AUDIO_SKIP and getattr(audio, name) != getattr(default, name)
    }


def _roberta_config(text) -> dict[str, Any]:
    from transformers import RobertaConfig

    return {
        "model_type": "roberta",
        **{name: getattr(text, name) for name in _init_fields(RobertaConfig) if hasattr(text, name)},
    }


def _frontend(folder: Path, n_mels: int, source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """clapkit ``frontend`` and ``audio`` sections from the folder's ``ClapFeatureExtractor``.

    Without ``preprocessor_config.json`` the extractor's defaults apply, with the model's ``n_mels``.
    """
    from transformers import ClapFeatureExtractor

    has_fe = (folder / "preprocessor_config.json").is_file()
    fe = ClapFeatureExtractor.from_pretrained(folder) if has_fe else ClapFeatureExtractor(feature_size=n_mels)
    if fe.feature_size != n_mels:
        raise ValueError(
            f"{source}: preprocessor_config.json gives {fe.feature_size} mel bins, the model's audio_config "
            f"{n_mels}; fix whichever is wrong"
        )
    if fe.padding not in _PADS:
        raise ValueError(
            f"{source}: feature extractor padding {fe.padding!r} is not supported; valid: {', '.join(_PADS)}"
        )
    frontend = {
        "sample_rate": fe.sampling_rate,
        "n_fft": fe.fft_window_size,
        "hop_length": fe.hop_length,
        "n_mels": fe.feature_size,
        "f_min": float(fe.frequency_min),
        "f_max": float(fe.frequency_max),
        "top_db": fe.top_db,
    }
    clip = float(fe.max_length_s)
    audio = {"sample_rate": fe.sampling_rate, "clip_seconds": clip, "hop_seconds": clip / 2, "pad": _PADS[fe.padding]}
    return frontend, audio


def hf_config(folder: Path, base: dict[str, Any], tokenizer: str | None = None) -> dict[str, Any]:
    """A clapkit model config dict for a Hugging Face ClapModel folder.

    Args:
        folder: The ClapModel folder.
        base: A registered LAION model config, for what the folder does not say (default tokenizer, max_length).
        tokenizer: Tokenizer folder or hub id; default: the folder itself if it holds tokenizer files, else the
            base config's (``FacebookAI/roberta-base``).
    """
    from transformers import ClapConfig

    source = str(folder)
    config = ClapConfig.from_pretrained(folder)
    if config.audio_config.enable_fusion:
        raise ValueError(
            f"{source}: a fusion model (audio_config.enable_fusion=true, e.g. laion/clap-htsat-fused); clapkit "
            "supports unfused models only — use an unfused one such as laion/clap-htsat-unfused"
        )
    frontend, audio = _frontend(folder, config.audio_config.num_mel_bins, source)
    text_params = dict(base["text_tower"]["params"])
    text_params["config"] = _roberta_config(config.text_config)
    if tokenizer is not None:
        text_params["path"] = str(tokenizer)
    elif any((folder / name).is_file() for name in _TOKENIZER_FILES):
        text_params["path"] = str(folder)
    proj = {"type": "mlp", "hidden": config.projection_dim, "act": config.projection_hidden_act}
    return {
        **base,
        "embed_dim": config.projection_dim,
        "audio": {**base["audio"], **audio},
        "frontend": {**base["frontend"], **frontend},
        "audio_tower": {"name": "htsat", "params": _audio_params(config.audio_config)},
        "text_tower": {"name": "hf", "params": text_params},
        "audio_projection": proj,
        "text_projection": dict(proj),
    }


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The folder's ``model.safetensors``, or ``pytorch_model.bin`` read with ``weights_only=True``."""
    if (folder / "model.safetensors").is_file():
        return read_safetensors(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").is_file():
        return read_torch_state(folder / "pytorch_model.bin")
    raise ValueError(f"{folder}: no model.safetensors or pytorch_model.bin (sharded checkpoints are not supported)")


def dropped_reason(key: str) -> str:
    """Why ``hf_state`` leaves ``key`` out."""
    if key == "logit_scale_t":
        return "the second temperature; clapkit keeps one (logit_scale_a)"
    return "index buffer that RoBERTa recomputes"


def hf_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename a ClapModel state dict to clapkit's keys; returns it and the dropped keys.

    Dropped: ``logit_scale_t`` (clapkit keeps one temperature) and the text embeddings' ``position_ids`` /
    ``token_type_ids`` buffers (RoBERTa recomputes them). Anything unknown is passed through for the strict load
    to report.
    """
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        if key == "logit_scale_t" or (key.startswith("text_model.") and key.endswith(_DROPPED_SUFFIXES)):
            dropped.append(key)
        elif key == "logit_scale_a":
            out["logit_scale"] = value
        elif key.startswith("text_model."):
            out["text_tower.model." + key[len("text_model.") :]] = value
        elif key.startswith("audio_model."):
            out["audio_tower.model." + key[len("audio_model.") :]] = value
        elif key.startswith(("audio_projection.", "text_projection.")):
            out[key.replace(".linear1.", ".0.").replace(".linear2.", ".2.")] = value
        else:
            out[key] = value
    return out, dropped
