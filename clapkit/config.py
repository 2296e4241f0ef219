"""Typed model configuration and the registry of architectures (``model_configs/*.json``, file stem = name).

A model config names an audio tower and a text tower (by registry name, with their own
parameters), optional trainable sequence heads on top of them, the projections into the joint
space and the audio input policy. Units are in the field comments.

The registry is filled from ``model_configs/`` at import and by ``register_model_config``; ``list_models`` and
``get_model_config`` read it, and ``clapkit.create_model`` builds from it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dacite

__all__ = [
    "CONFIG_DIR",
    "AudioConfig",
    "HeadConfig",
    "MelConfig",
    "ModelConfig",
    "ProjectionConfig",
    "TowerConfig",
    "from_mapping",
    "get_model_config",
    "list_models",
    "merge",
    "register_model_config",
]

T = TypeVar("T")

#: Folder of the packaged architectures, one JSON file per model.
CONFIG_DIR = Path(__file__).parent / "model_configs"

# Strict: unknown keys and wrong types are errors. YAML/JSON write 10 for 10.0 and lists for tuples, so ints
# become floats and lists become tuples where the field says so.
_STRICT = dacite.Config(strict=True, cast=[float, tuple])


def from_mapping(cls: type[T], raw: Mapping[str, Any] | None, where: str) -> T:
    """Build the dataclass ``cls`` (nested dataclasses included) from a mapping read from a file.

    Args:
        cls: The dataclass to build.
        raw: Its fields as read from JSON or YAML; ``None`` builds the defaults.
        where: What the mapping is (a file name or a config section), named in errors.

    Raises:
        ValueError: ``raw`` is not a mapping, has unknown keys (the valid ones are listed), lacks a required
            field or holds a value of the wrong type.
    """
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(raw).__name__}")
    _check_keys(cls, raw, where)
    try:
        return dacite.from_dict(cls, dict(raw), config=_STRICT)
    except dacite.DaciteError as err:
        raise ValueError(f"{where}: {err}") from None


def _check_keys(cls: type, raw: Mapping[str, Any], where: str) -> None:
    """Unknown keys anywhere in the nested mapping, named with their path and the valid keys there."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    for name, value in raw.items():
        inner = [t for t in (hints[name], *typing.get_args(hints[name])) if dataclasses.is_dataclass(t)]
        if inner and isinstance(value, Mapping):
            _check_keys(inner[0], value, f"{where}.{name}")


@dataclass
class MelConfig:
    """Log-mel front end; defaults are the LAION-CLAP preset (matches HF ``ClapFeatureExtractor``)."""

    sample_rate: int = 48000  # Hz
    n_fft: int = 1024  # samples
    win_length: int | None = None  # samples; None = n_fft
    hop_length: int = 480  # samples (10 ms at 48 kHz)
    n_mels: int = 64
    f_min: float = 50.0  # Hz
    f_max: float | None = 14000.0  # Hz; None = Nyquist
    mel_scale: str = "slaney"  # "slaney" | "htk"
    norm: str | None = "slaney"  # filter normalisation: "slaney" (area) | "l1" (unit sum, librosa norm=1) | None
    power: float = 2.0  # 2 = power spectrogram, 1 = magnitude
    log: str = "db"  # "db": 10·log10(max(x, amin)); "ln": ln(x + amin); "log10p": log10(log_mult·x + 1)
    amin: float = 1e-10  # log floor ("db", "ln")
    log_mult: float = 1.0  # gain inside "log10p"
    out_scale: float = 1.0  # the log-mel is divided by this (min-max scaling of pretrained CNNs)
    top_db: float | None = None  # dB dynamic range clamp; None = no clamp
    center: bool = True
    pad_mode: str = "reflect"  # STFT padding when center: "reflect" (LAION, HF) | "constant" (librosa ≥ 0.10)


@dataclass
class AudioConfig:
    """How raw audio becomes fixed-length model input."""

    sample_rate: int = 48000  # Hz; every input is resampled to this
    clip_seconds: float = 10.0  # s; one window of model input
    hop_seconds: float = 5.0  # s; window hop for audio longer than one clip
    pad: str = "repeatpad"  # "repeatpad" (LAION-CLAP) | "zero"

    @property
    def clip_samples(self) -> int:
        return round(self.clip_seconds * self.sample_rate)

    @property
    def hop_samples(self) -> int:
        return round(self.hop_seconds * self.sample_rate)


@dataclass
class TowerConfig:
    """An encoder tower chosen by registry name; ``params`` go to its constructor."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    freeze: bool = False  # frozen towers stay in eval mode and out of the optimizer
    # Run the tower under autocast to this dtype ("bfloat16", "float16"); its outputs are returned in float32.
    # ~2x faster for a frozen CNN on CPUs with AVX512-BF16, at a cosine of ~0.9995 to the float32 features.
    autocast: str | None = None

    def __post_init__(self) -> None:
        if self.autocast not in (None, "bfloat16", "float16"):
            raise ValueError(f"tower {self.name!r}: autocast={self.autocast!r}; expected null, 'bfloat16' or 'float16'")


@dataclass
class HeadConfig:
    """Trainable transformer over a (usually frozen) tower's sequence, e.g. to learn event order."""

    layers: int = 1
    width: int = 256
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    max_len: int = 512  # positions (frames or tokens)
    pool: str = "mean"  # "mean" over valid positions | "cls"


@dataclass
class ProjectionConfig:
    """Map a tower's pooled feature into the joint space."""

    type: str = "mlp"  # "linear" | "mlp" (Linear → act → Linear, as LAION-CLAP and HF ClapModel)
    hidden: int | None = None  # None = embed_dim
    act: str = "relu"  # "relu" | "gelu"


@dataclass
class ModelConfig:
    """Everything needed to build a ``ClapModel``."""

    embed_dim: int
    audio_tower: TowerConfig
    text_tower: TowerConfig
    audio: AudioConfig = field(default_factory=AudioConfig)
    frontend: MelConfig | None = None  # log-mel input of spectrogram towers
    audio_head: HeadConfig | None = None
    text_head: HeadConfig | None = None
    audio_projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    text_projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    logit_scale_init: float = 1 / 0.07  # initial 1/temperature (CLIP)
    logit_scale_max: float = 100.0  # clamp of exp(logit_scale), as CLIP
    name: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        return from_mapping(cls, copy.deepcopy(dict(d)), "model config")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: nested dicts are merged, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ---------------------------------------------------------------------------------------------------- registry
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


_scan()
