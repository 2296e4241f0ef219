"""Clip curation: DC removal, silence trimming, loudness normalisation, near-duplicate detection, splits.

Everything here works on mono float tensors [T] at one sample rate and is independent of where the
audio came from, so it is tested on synthetic signals. Loudness is ITU-R BS.1770 integrated loudness
(torchaudio's ``loudness``), in LUFS.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
import torchaudio.functional as AF

__all__ = [
    "ProcessConfig",
    "assign_source_splits",
    "assign_splits",
    "find_duplicates",
    "normalize_loudness",
    "plan_segments",
    "process_clip",
    "remove_dc",
    "signature",
    "trim_silence",
]


@dataclass(frozen=True)
class ProcessConfig:
    """How a source becomes a clip. The defaults are those of the debian-sounds class map.

    Attributes:
        sample_rate: Rate of the written clips, Hz.
        min_seconds: Clips shorter than this after trimming are skipped.
        max_seconds: Longer clips keep their first ``max_seconds`` after trimming.
        trim_top_db: Leading/trailing frames more than this many dB below the loudest frame are silence.
        trim_frame_seconds: Frame length of the trimming energy envelope, s.
        highpass_hz: Cut-off of the high-pass that removes DC offset and rumble, Hz.
        target_lufs: Integrated loudness of every written clip, LUFS.
        peak_dbfs: Sample-peak ceiling; the gain is lowered for clips that would exceed it, dBFS.
    """

    sample_rate: int = 44100
    min_seconds: float = 0.5
    max_seconds: float = 10.0
    trim_top_db: float = 50.0
    trim_frame_seconds: float = 0.02
    highpass_hz: float = 20.0
    target_lufs: float = -23.0
    peak_dbfs: float = -1.0


def remove_dc(wave: torch.Tensor, sample_rate: int, highpass_hz: float) -> torch.Tensor:
    """Subtract the mean, then high-pass [T] → [T] (some source recordings carry a large DC offset)."""
    wave = wave - wave.mean()
    if highpass_hz <= 0 or wave.numel() == 0:
        return wave
    # Lead in with the first sample held for 0.1 s so the filter's start-up transient falls outside the clip.
    lead = round(0.1 * sample_rate)
    padded = torch.cat([wave[:1].expand(lead), wave])
    return AF.highpass_biquad(padded, sample_rate, highpass_hz)[lead:]


def trim_silence(wave: torch.Tensor, sample_rate: int, top_db: float, frame_seconds: float = 0.02) -> tuple[int, int]:
    """Sample range ``[start, end)`` between the first and last frame within ``top_db`` of the loudest frame.

    Args:
        wave: Mono audio [T].
        sample_rate: Hz.
        top_db: Frames whose RMS is more than this many dB below the loudest frame count as silence.
        frame_seconds: Frame length of the RMS envelope.

    Returns:
        ``(start, end)``; ``(0, 0)`` for digital silence.
    """
    frame = max(1, round(frame_seconds * sample_rate))
    n = wave.shape[-1] // frame
    if n == 0:
        return (0, wave.shape[-1]) if wave.numel() and float(wave.abs().max()) > 0 else (0, 0)
    rms = wave[: n * frame].reshape(n, frame).pow(2).mean(dim=1).sqrt()
    top = float(rms.max())
    if top == 0.0:
        return 0, 0
    active = torch.nonzero(rms >= top * 10 ** (-top_db / 20)).flatten()
    start = int(active[0]) * frame
    end = min(wave.shape[-1], (int(active[-1]) + 1) * frame)
    return start, end


def normalize_loudness(
    wave: torch.Tensor, sample_rate: int, target_lufs: float, peak_dbfs: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Scale [T] to ``target_lufs`` integrated loudness, lowering the gain if the peak would pass ``peak_dbfs``.

    Returns:
        The scaled audio [T] and ``{"loudness_lufs": measured before, "gain_db": applied}``.

    Raises:
        ValueError: the clip is too short (< 0.4 s, one BS.1770 block) or silent to measure.
    """
    if wave.shape[-1] < int(0.4 * sample_rate):
        raise ValueError(f"{wave.shape[-1] / sample_rate:.2f} s is too short to measure loudness (needs 0.4 s)")
    lufs = float(AF.loudness(wave.unsqueeze(0).double(), sample_rate))
    if not math.isfinite(lufs):
        raise ValueError("silent: no loudness above the BS.1770 gate")
    gain_db = target_lufs - lufs
    peak = float(wave.abs().max())
    peak_gain_db = peak_dbfs - 20 * math.log10(peak)
    gain_db = min(gain_db, peak_gain_db)
    return wave * 10 ** (gain_db / 20), {"loudness_lufs": round(lufs, 2), "gain_db": round(gain_db, 2)}


def process_clip(wave: torch.Tensor, cfg: ProcessConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """DC removal → trim → length cap → loudness normalisation: [T] at ``cfg.sample_rate`` → [T'].

    Returns:
        The clip and its stats (``trim_start`` / ``trim_end`` in s, ``loudness_lufs``, ``gain_db``).

    Raises:
        ValueError: silent, or shorter than ``cfg.min_seconds`` after trimming (the message says which).
    """
    sr = cfg.sample_rate
    wave = remove_dc(wave.float(), sr, cfg.highpass_hz)
    start, end = trim_silence(wave, sr, cfg.trim_top_db, cfg.trim_frame_seconds)
    if end <= start:
        raise ValueError("silent (no sample above zero)")
    seconds = (end - start) / sr
    if seconds < cfg.min_seconds:
        raise ValueError(f"{seconds:.2f} s after trimming silence, shorter than min_seconds={cfg.min_seconds}")
    end = min(end, start + int(cfg.max_seconds * sr))
    clip, stats = normalize_loudness(wave[start:end], sr, cfg.target_lufs, cfg.peak_dbfs)
    return clip, {"trim_start": round(start / sr, 3), "trim_end": round(end / sr, 3), **stats}


def plan_segments(
    seconds: float, segments: Sequence[Sequence[float]] | None = None, chunk_seconds: float | None = None
) -> list[tuple[float, float] | None]:
    """Which parts of a source recording become clips.

    Args:
        seconds: Duration of the source.
        segments: Hand-picked ``[start, end]`` ranges in seconds (``end`` past the source is clamped).
        chunk_seconds: Cut the whole source into consecutive pieces of this length instead
            (a last piece shorter than half a chunk joins the one before).

    Returns:
        ``[None]`` (the whole recording) or a list of ``(start, end)`` ranges.

    Raises:
        ValueError: an empty or reversed range, or a range that starts past the end.
    """
    if segments:
        out = []
        for seg in segments:
            if len(seg) != 2 or not 0 <= seg[0] < seg[1]:
                raise ValueError(f"segment {list(seg)} must be [start, end] with 0 <= start < end (seconds)")
            if seg[0] >= seconds:
                raise ValueError(f"segment {list(seg)} starts after the end of the {seconds:.2f} s recording")
            out.append((float(seg[0]), float(min(seg[1], seconds))))
        return out
    if chunk_seconds:
        if chunk_seconds <= 0:
            raise ValueError(f"chunk_seconds must be positive, got {chunk_seconds}")
        n = max(1, math.floor(seconds / chunk_seconds + 0.5))
        bounds = [i * chunk_seconds for i in range(n)] + [seconds]
        return [(round(a, 3), round(b, 3)) for a, b in itertools.pairwise(bounds)]
    return [None]


def signature(wave: torch.Tensor, sample_rate: int, bins: int = 32, n_mels: int = 64) -> torch.Tensor:
    """A coarse time-frequency fingerprint [n_mels * bins]: log-mel energies pooled into ``bins`` time bins.

    Energies more than 60 dB below the loudest bin are clipped to that floor, so that a copy with a
    different noise floor or gain still matches.
    """
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=2048, hop_length=512, n_mels=n_mels)(wave.float())
    db = 10 * torch.log10(mel + 1e-12)  # [n_mels, frames]
    logmel = db.clamp(min=float(db.max()) - 60.0)
    pooled = torch.nn.functional.adaptive_avg_pool1d(logmel.unsqueeze(0), bins).squeeze(0)  # [n_mels, bins]
    return pooled.flatten()


def find_duplicates(
    items: Sequence[tuple[str, float, torch.Tensor]], *, max_length_ratio: float = 1.02, min_correlation: float = 0.99
) -> list[tuple[str, str, float]]:
    """Pairs of near-identical clips (the same recording encoded twice, a copy under another name).

    Args:
        items: ``(key, seconds, signature)`` per clip, in priority order (the first of a pair is kept).
        max_length_ratio: Clips whose durations differ by more than this factor are never duplicates.
        min_correlation: Pearson correlation of the signatures at or above which two clips are duplicates.

    Returns:
        ``(kept key, duplicate key, correlation)`` for every duplicate, each duplicate listed once.
    """
    found: list[tuple[str, str, float]] = []
    dropped: set[str] = set()
    for i, (key_a, sec_a, sig_a) in enumerate(items):
        if key_a in dropped:
            continue
        for key_b, sec_b, sig_b in items[i + 1 :]:
            if key_b in dropped or max(sec_a, sec_b) > max_length_ratio * min(sec_a, sec_b):
                continue
            r = float(torch.corrcoef(torch.stack([sig_a, sig_b]))[0, 1])
            if r >= min_correlation:
                found.append((key_a, key_b, round(r, 4)))
                dropped.add(key_b)
    return found


def _rank(salt: str, group: str) -> str:
    return hashlib.sha1(f"{salt}\0{group}".encode()).hexdigest()


def assign_splits(
    groups: Sequence[str],
    test_fraction: float,
    *,
    salt: str,
    fixed: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Deterministic train/test assignment of the recording groups of one class.

    Clips cut from one recording share a group and so a split. Groups are ordered by a hash of
    ``salt`` (the class name) and the group name, so the result depends only on this class's groups,
    not on the order they were listed or on other classes. ``round(test_fraction * n)`` groups, at
    least one, go to test, taken in that order but passing over any group that would put more than
    half of the class's clips in test (the smallest group is the fallback); the rest train.

    Args:
        groups: The group of every clip of the class (a group listed k times has k clips).
        test_fraction: Share of groups held out.
        salt: Makes the order class-specific.
        fixed: Groups with a split chosen in the class map (``"train"`` / ``"test"``).

    Returns:
        ``group → "train" | "test"``.

    Raises:
        ValueError: fewer than two groups (no split possible), a bad fraction or a bad fixed split.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    unique = sorted(set(groups))
    if len(unique) < 2:
        raise ValueError(f"{salt}: {len(unique)} recording group(s); a train/test split needs at least 2")
    fixed = dict(fixed or {})
    for group, split in fixed.items():
        if split not in ("train", "test"):
            raise ValueError(f"{salt}: group {group!r} has split {split!r}; use 'train' or 'test'")
    sizes = Counter(groups)
    n_test = min(len(unique) - 1, max(1, math.floor(test_fraction * len(unique) + 0.5)))
    out = {g: fixed[g] for g in unique if g in fixed}
    free = sorted((g for g in unique if g not in fixed), key=lambda g: _rank(salt, g))
    need = max(0, n_test - sum(1 for s in out.values() if s == "test"))
    test_clips = sum(sizes[g] for g, s in out.items() if s == "test")
    for group in free:
        if need and test_clips + sizes[group] <= len(groups) / 2:
            out[group], need, test_clips = "test", need - 1, test_clips + sizes[group]
        else:
            out[group] = "train"
    if "test" not in out.values() and free:
        out[min(free, key=lambda g: (sizes[g], _rank(salt, g)))] = "test"
    if "train" not in out.values() or "test" not in out.values():
        side = "train" if "train" not in out.values() else "test"
        raise ValueError(f"{salt}: the fixed splits leave no {side} group")
    return out


def assign_source_splits(
    packages: Sequence[str],
    groups: Sequence[str],
    test_fraction: float,
    *,
    salt: str,
    min_clips: int,
    fixed: Mapping[str, str] | None = None,
    hold_out: str | bool = True,
    never: Collection[str] = (),
) -> tuple[dict[str, str], str | None, str]:
    """Train/test/cross assignment of one class whose clips may come from several packages.

    One package is held out entirely as ``"cross"`` (every clip of the class from it), so that the class's
    cross-source clips come from a package the class never trains on; the other packages' groups are split
    train/test by :func:`assign_splits`. A package may be held out only if the clips of the others number at
    least ``min_clips``, in at least two recording groups, and their train/test split is possible. Among those,
    the package first in the order of a hash of ``salt`` (the class name) and the package name is chosen.
    Packages holding a group with a fixed split, and those in ``never``, are not chosen automatically; a pinned
    package is held out whatever its fixed splits say. With one package, ``hold_out=False`` or no eligible
    package, the clips are split train/test as :func:`assign_splits` alone would.

    Args:
        packages: The source package of every clip of the class.
        groups: The recording group of every clip (parallel to ``packages``); a group lies in one package.
        test_fraction: Share of the remaining groups held out as the in-source test.
        salt: Makes the orders class-specific.
        min_clips: The fewest clips the remaining packages may keep.
        fixed: Groups with a split chosen in the class map (``"train"`` / ``"test"``).
        hold_out: ``True`` to choose the package, a package name to hold out that one, ``False`` for none.
        never: Packages never chosen automatically (they only add training / in-source clips).

    Returns:
        ``(group → "train" | "test" | "cross", held-out package or None, reason)``; the reason says why
        this package (``"chosen by hash among [eligible packages]"`` / ``"pinned in the class map"``) or why
        none was held out.

    Raises:
        ValueError: mismatched lists, a group in two packages, or no train/test split of the class at all.
    """
    if len(packages) != len(groups):
        raise ValueError(f"{salt}: {len(packages)} packages for {len(groups)} groups; give one of each per clip")
    package_of: dict[str, str] = {}
    for package, group in zip(packages, groups):
        if package_of.setdefault(group, package) != package:
            raise ValueError(f"{salt}: recording group {group!r} has clips from {package_of[group]} and {package}")
    fixed = dict(fixed or {})

    def in_source(excluded: str | None) -> dict[str, str]:
        kept = [g for p, g in zip(packages, groups) if p != excluded]
        pins = {g: s for g, s in fixed.items() if package_of.get(g) != excluded}
        return assign_splits(kept, test_fraction, salt=salt, fixed=pins)

    names = sorted(set(packages))
    if len(names) < 2:
        return in_source(None), None, f"one package ({names[0]})" if names else "no clips"
    if hold_out is False:
        return in_source(None), None, "opted out in the class map (cross_source_package: false)"
    if isinstance(hold_out, str):
        if hold_out not in names:
            return in_source(None), None, f"pinned package {hold_out} has no clips of this class"
        candidates, why = [hold_out], "pinned in the class map"
    else:
        has_fixed = {package_of[g] for g in fixed if g in package_of}
        skip = has_fixed | set(never)
        candidates = sorted((p for p in names if p not in skip), key=lambda p: _rank(salt, p))
        why = ""
    problems, eligible = [], {}
    for package in candidates:
        kept = [g for p, g in zip(packages, groups) if p != package]
        if len(kept) < min_clips or len(set(kept)) < 2:
            problems.append(f"holding out {package} leaves {len(kept)} clips in {len(set(kept))} recording groups")
            continue
        try:
            eligible[package] = in_source(package)
        except ValueError as err:
            problems.append(f"holding out {package}: {err}")
    if eligible:
        package, splits = next(iter(eligible.items()))
        splits.update({g: "cross" for g, p in package_of.items() if p == package})
        return splits, package, why or f"chosen by hash among {sorted(eligible)}"
    reason = "; ".join(problems) or "every package holds a fixed split or is never held out (held_out: false)"
    return in_source(None), None, f"none held out: {reason} (the rest must keep {min_clips}+ clips in 2+ groups)"
