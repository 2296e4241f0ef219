"""Audio in: decode (soundfile) → mono float32 → resample (torchaudio) → crop / pad / windows.

Every function that accepts user audio validates it and raises ``ValueError`` naming the input
and the problem (empty, NaN/Inf samples, undecodable bytes, unknown format).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

PadMode = Literal["repeatpad", "zero"]
CropMode = Literal["center", "random", "start"]

# A path, encoded bytes, an open binary file, an array at a known rate, or ``(array, rate)``.
AudioSource = str | os.PathLike | bytes | BinaryIO | np.ndarray | torch.Tensor | tuple

__all__ = [
    "AudioSource",
    "CropMode",
    "PadMode",
    "chunk",
    "describe",
    "fit_length",
    "load_audio",
    "load_many",
    "resample",
    "sliding_windows",
    "to_mono",
    "window_starts",
]


def describe(source: object) -> str:
    """A short human name for an audio source, used in error messages."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    if isinstance(source, tuple) and len(source) == 2:
        return f"<array {tuple(np.shape(source[0]))} @ {source[1]} Hz>"
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return f"<array {tuple(source.shape)}>"
    name = getattr(source, "name", None)
    return str(name) if isinstance(name, str) else f"<{type(source).__name__}>"


def _decode(source: str | os.PathLike | bytes | BinaryIO, name: str) -> tuple[np.ndarray, int]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"{name}: no such audio file")
        if path.stat().st_size == 0:
            raise ValueError(f"{name}: empty file (0 bytes); expected wav/flac/ogg/mp3 audio")
    elif isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise ValueError(f"{name}: empty bytes; expected encoded wav/flac/ogg/mp3 audio")
        source = io.BytesIO(source)
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise ValueError(f"{name}: cannot decode audio ({err}); supported formats: {_formats()}") from err
    return data.T, int(rate)  # (C, T)


def _formats() -> str:
    return ", ".join(sorted(k.lower() for k in sf.available_formats()))


def to_mono(wave: torch.Tensor) -> torch.Tensor:
    """Average channels: [C, T] or [T] → [T]."""
    return wave.mean(dim=0) if wave.dim() == 2 else wave


def _as_channels_first(array: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    wave = torch.as_tensor(np.asarray(array) if isinstance(array, np.ndarray) else array)
    if wave.dim() == 1:
        wave = wave.unsqueeze(0)
    elif wave.dim() == 2:
        # Channels-first [C, T] is the torch convention; soundfile gives [T, C]: the longer axis is time.
        if wave.shape[0] > wave.shape[1]:
            wave = wave.T
    else:
        raise ValueError(f"{name}: expected a 1-D [T] or 2-D [C, T] waveform, got shape {tuple(wave.shape)}")
    if not (wave.dtype.is_floating_point or wave.dtype in (torch.int16, torch.int32)):
        raise ValueError(f"{name}: unsupported sample dtype {wave.dtype}; expected float or int16/int32 PCM")
    if wave.dtype == torch.int16:
        return wave.float() / 32768.0
    if wave.dtype == torch.int32:
        return wave.float() / 2147483648.0
    return wave.float()


def resample(wave: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling (torchaudio's windowed sinc) along the last axis."""
    if orig_rate == new_rate:
        return wave
    return AF.resample(wave, orig_rate, new_rate)


def load_audio(
    source: AudioSource,
    sample_rate: int,
    *,
    source_rate: int | None = None,
    name: str | None = None,
) -> torch.Tensor:
    """Decode or take audio, downmix to mono and resample to ``sample_rate``.

    Args:
        source: A path, encoded bytes, a binary file object, a waveform array ([T] or [C, T]),
            or an ``(array, rate)`` tuple.
        sample_rate: Target rate in Hz.
        source_rate: Rate of a bare array; ``None`` means it is already at ``sample_rate``.
        name: How to name the input in errors (defaults to the path or a short description).

    Returns:
        Mono float32 waveform [T] at ``sample_rate``.

    Raises:
        ValueError: empty, undecodable, non-finite or wrongly shaped input.
    """
    name = name or describe(source)
    if isinstance(source, tuple):
        if len(source) != 2:
            raise ValueError(f"{name}: expected an (array, sample_rate) tuple")
        source, source_rate = source
    if isinstance(source, (np.ndarray, torch.Tensor)):
        wave = _as_channels_first(source, name)
        rate = int(source_rate or sample_rate)
    elif isinstance(source, (str, os.PathLike, bytes, bytearray)) or hasattr(source, "read"):
        data, rate = _decode(source, name)
        wave = torch.from_numpy(np.ascontiguousarray(data))
    else:
        raise ValueError(f"{name}: unsupported audio input of type {type(source).__name__}")
    if wave.shape[-1] == 0:
        raise ValueError(f"{name}: 0 samples after decoding; expected audio of at least 1 frame")
    if not torch.isfinite(wave).all():
        bad = int((~torch.isfinite(wave)).sum())
        raise ValueError(f"{name}: {bad} NaN/Inf samples; clean the signal before embedding it")
    return resample(to_mono(wave), rate, sample_rate).contiguous()


def fit_length(
    wave: torch.Tensor,
    length: int,
    *,
    pad: PadMode = "repeatpad",
    crop: CropMode = "center",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Crop or pad the last axis of ``wave`` [..., T] to exactly ``length`` samples.

    Args:
        pad: ``repeatpad`` tiles a short clip as many whole times as fit, then zero-pads
            (LAION-CLAP); ``zero`` zero-pads at the end.
        crop: ``center`` and ``start`` are deterministic; ``random`` draws the offset from
            ``generator`` (training only).
    """
    n = wave.shape[-1]
    if n == length:
        return wave
    if n > length:
        if crop == "center":
            start = (n - length) // 2
        elif crop == "start":
            start = 0
        elif crop == "random":
            start = int(torch.randint(0, n - length + 1, (1,), generator=generator))
        else:
            raise ValueError(f"unknown crop mode {crop!r}; valid: center, random, start")
        return wave[..., start : start + length]
    if pad == "repeatpad":
        wave = wave.repeat(*([1] * (wave.dim() - 1)), length // n)
    elif pad != "zero":
        raise ValueError(f"unknown pad mode {pad!r}; valid: repeatpad, zero")
    return torch.nn.functional.pad(wave, (0, length - wave.shape[-1]))


def window_starts(num_samples: int, length: int, hop: int) -> list[int]:
    """Deterministic window offsets covering ``[0, num_samples)``; the last window ends at the end."""
    if num_samples <= length:
        return [0]
    count = math.ceil((num_samples - length) / hop) + 1
    starts = [i * hop for i in range(count)]
    starts[-1] = num_samples - length
    return sorted(set(starts))


def sliding_windows(wave: torch.Tensor, length: int, hop: int, *, pad: PadMode = "repeatpad") -> torch.Tensor:
    """Cut a mono waveform [T] into fixed windows [W, length] (a short clip is padded, not windowed)."""
    if hop <= 0 or length <= 0:
        raise ValueError(f"window length and hop must be positive, got length={length}, hop={hop}")
    if wave.shape[-1] <= length:
        return fit_length(wave, length, pad=pad).unsqueeze(0)
    return torch.stack([wave[s : s + length] for s in window_starts(wave.shape[-1], length, hop)])


def chunk(wave: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping zero-padded chunks for sequence features.

    Returns:
        chunks [W, length] and the number of real samples in each [W].
    """
    n = wave.shape[-1]
    count = max(1, math.ceil(n / length))
    padded = torch.nn.functional.pad(wave, (0, count * length - n))
    valid = torch.tensor([min(length, n - i * length) for i in range(count)])
    return padded.view(count, length), valid


def load_many(
    sources: Sequence[AudioSource], sample_rate: int, *, source_rate: int | None = None
) -> list[torch.Tensor]:
    """``load_audio`` over a list (arrays share ``source_rate``)."""
    return [load_audio(s, sample_rate, source_rate=source_rate) for s in sources]
