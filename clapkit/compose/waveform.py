"""Waveform operations of the scene composer: loudness, trimming, cutting, repetition, FLAC encoding.

Waveforms are mono numpy arrays [T] (float64 while a scene is built); loudness is ITU-R BS.1770 integrated
loudness (``torchaudio.functional.loudness``) in LUFS.
"""

from __future__ import annotations

import io
import math

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

__all__ = ["cut", "fade", "loudest_window", "loudness", "normalise", "repeat", "to_flac", "trim"]


def loudness(wave: np.ndarray, rate: int) -> float:
    """Integrated loudness (LUFS); clips shorter than one 400 ms gating block are tiled to measure them."""
    block = int(0.4 * rate) + 1
    if len(wave) < block:
        wave = np.tile(wave, math.ceil(block / max(len(wave), 1)))
    value = AF.loudness(torch.from_numpy(wave.astype(np.float32))[None], rate).item()
    return value if math.isfinite(value) else -math.inf


def normalise(wave: np.ndarray, rate: int, lufs: float) -> np.ndarray:
    """``wave`` scaled to ``lufs`` integrated loudness; silence is returned as it is."""
    current = loudness(wave, rate)
    if not math.isfinite(current):
        return wave
    return wave * 10 ** ((lufs - current) / 20)


def trim(wave: np.ndarray, trim_db: float | None) -> np.ndarray:
    """Leading and trailing audio quieter than the peak minus ``trim_db`` (dB) cut off; ``None`` keeps all."""
    if trim_db is None:
        return wave
    loud = np.flatnonzero(np.abs(wave) >= np.abs(wave).max() * 10 ** (-trim_db / 20))
    return wave[loud[0] : loud[-1] + 1]


def cut(wave: np.ndarray, samples: int, fade: int) -> np.ndarray:
    """At most ``samples`` long; where it is cut, the last ``fade`` samples fade out (no click)."""
    if len(wave) <= samples:
        return wave
    out = wave[:samples].copy()
    fade = min(fade, samples)
    out[samples - fade :] *= np.linspace(1.0, 0.0, fade)
    return out


def fade(wave: np.ndarray, samples: int) -> np.ndarray:
    """A copy of ``wave`` that fades in over its first and out over its last ``samples`` samples."""
    out = wave.copy()
    samples = min(samples, len(wave) // 2)
    if samples > 0:
        ramp = np.linspace(0.0, 1.0, samples)
        out[:samples] *= ramp
        out[len(out) - samples :] *= ramp[::-1]
    return out


def loudest_window(wave: np.ndarray, samples: int) -> np.ndarray:
    """The ``samples``-long stretch of ``wave`` with the most energy (all of ``wave`` when it is shorter)."""
    if len(wave) <= samples:
        return wave
    energy = np.concatenate([[0.0], np.cumsum(wave.astype(np.float64) ** 2)])
    start = int(np.argmax(energy[samples:] - energy[:-samples]))
    return wave[start : start + samples]


def repeat(unit: np.ndarray, period: int, length: int) -> np.ndarray:
    """``length`` samples holding ``unit`` every ``period`` samples from 0 (as many whole copies as fit).

    Raises:
        ValueError: ``period`` shorter than ``unit`` (copies would overlap) or ``length`` shorter than one copy.
    """
    if period < len(unit) or length < len(unit):
        raise ValueError(
            f"repeat: unit of {len(unit)} samples, period {period}, length {length}; "
            "expected period ≥ unit and length ≥ unit"
        )
    out = np.zeros(length, dtype=unit.dtype)
    for start in range(0, length - len(unit) + 1, period):
        out[start : start + len(unit)] = unit
    return out


def to_flac(wave: np.ndarray, rate: int) -> bytes:
    """``wave`` encoded as 24-bit FLAC at ``rate`` Hz."""
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="FLAC", subtype="PCM_24")
    return buf.getvalue()
