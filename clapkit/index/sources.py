"""What gets indexed: audio files and folders or WebDataset tar shards, cut into time windows.

A shard holds ``<key>.<audio ext>`` + ``<key>.json`` pairs (``{"captions", "labels", "duration", …}``);
its clips are read with webdataset and remembered as ``(shard path, member name)`` so that a search hit
can be played back from the tar without unpacking it.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from clapkit import audio as audio_io
from clapkit.data.files import AUDIO_EXTENSIONS, find_audio_files
from clapkit.progress import progress_bar

if TYPE_CHECKING:
    from clapkit.model import ClapModel

__all__ = [
    "SHARD_EXTENSIONS",
    "Clip",
    "Window",
    "cut_windows",
    "decoded_clips",
    "embed_windows",
    "expand_inputs",
    "iter_clips",
    "iter_shard",
    "read_member",
    "window_spans",
]

SHARD_EXTENSIONS = frozenset({".tar"})
# Shard JSON keys kept out of the index: training-only caption variants.
_TRAINING_ONLY = frozenset({"positives", "negatives"})


@dataclass
class Clip:
    """One recording to index.

    Attributes:
        path: The audio file, or the shard that holds it.
        member: Tar member name of a shard clip (``None`` for plain files).
        data: Encoded audio of a shard clip (``None``: decode ``path``).
        meta: Captions, labels and other fields from the shard's JSON.
    """

    path: str
    member: str | None = None
    data: bytes | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.path}#{self.member}" if self.member else self.path

    def entry(self) -> dict[str, Any]:
        """Index metadata of the clip: path, member, captions, labels and the other JSON fields."""
        meta = dict(self.meta)
        texts = {k: meta.pop(k, []) for k in ("captions", "labels")}
        meta.pop("duration", None)  # measured again from the decoded audio
        return {"path": self.path, "member": self.member, **texts, "fields": meta}


@dataclass
class Window:
    """A time span of a clip, ready for the model.

    Attributes:
        start: Start [s] in the clip.
        end: End [s] in the clip.
        wave: Mono samples at the model's rate [S].
    """

    start: float
    end: float
    wave: torch.Tensor


def expand_inputs(paths: Iterable[str | Path]) -> tuple[list[str], list[str]]:
    """Split inputs into audio files and tar shards; folders are searched recursively.

    Returns:
        (audio files, shards) as absolute paths (so an index can be served from any working directory),
        sorted within each folder and deduplicated in input order.

    Raises:
        ValueError: a path that does not exist, or a file that is neither audio nor a ``.tar`` shard.
    """
    files: list[str] = []
    shards: list[str] = []
    for p in paths:
        path = Path(p).expanduser().absolute()
        if path.is_dir():
            files.extend(str(f) for f in find_audio_files(path))
            shards.extend(str(f) for f in find_audio_files(path, SHARD_EXTENSIONS))
        elif path.is_file():
            if path.suffix.lower() in SHARD_EXTENSIONS:
                shards.append(str(path))
            elif path.suffix.lower() in AUDIO_EXTENSIONS:
                files.append(str(path))
            else:
                raise ValueError(
                    f"{path}: not an audio file ({', '.join(sorted(AUDIO_EXTENSIONS))}) or a .tar shard; "
                    "pass audio files, shards or folders"
                )
        else:
            raise ValueError(f"{path}: no such file or folder")
    return list(dict.fromkeys(files)), list(dict.fromkeys(shards))


def _audio_member(sample: dict[str, Any]) -> str | None:
    for ext in sorted(AUDIO_EXTENSIONS):
        if ext[1:] in sample:
            return ext[1:]
    return None


def iter_shard(shard: str | Path, on_error: Callable[[str, Exception], None] | None = None) -> Iterator[Clip]:
    """Clips of one WebDataset shard, in tar order.

    Args:
        shard: Path of a ``.tar`` shard.
        on_error: Called with ``(name, error)`` for a sample that cannot be read (no audio member, bad JSON,
            a truncated tar); the sample is skipped. ``None`` re-raises as ``ValueError``.
    """
    import webdataset as wds

    shard = str(shard)

    def handler(err: Exception) -> bool:
        if on_error is None:
            raise ValueError(f"{shard}: cannot read shard ({err})") from err
        on_error(shard, err)
        return True

    pipeline = wds.DataPipeline(wds.SimpleShardList([shard]), wds.tarfile_to_samples(handler=handler))
    for sample in pipeline:
        key = sample["__key__"]
        ext = _audio_member(sample)
        try:
            if ext is None:
                raise ValueError(f"no audio member (expected one of {', '.join(sorted(AUDIO_EXTENSIONS))})")
            meta = json.loads(sample["json"]) if "json" in sample else {}
            if not isinstance(meta, dict):
                raise ValueError(f"{key}.json is not a JSON object")
        except (ValueError, UnicodeDecodeError) as err:
            handler(ValueError(f"{shard}#{key}: {err}"))
            continue
        meta = {k: v for k, v in meta.items() if k not in _TRAINING_ONLY}
        yield Clip(path=shard, member=f"{key}.{ext}", data=sample[ext], meta=meta)


def iter_clips(
    files: Sequence[str], shards: Sequence[str] = (), on_error: Callable[[str, Exception], None] | None = None
) -> Iterator[Clip]:
    """Plain files first, then every shard's clips."""
    for f in files:
        yield Clip(path=f)
    for s in shards:
        yield from iter_shard(s, on_error)


def decoded_clips(
    clips: Iterable[Clip], sample_rate: int, on_error: Callable[[str, Exception], None]
) -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
    """``(entry metadata, mono waveform [T] at sample_rate)`` per clip; undecodable clips go to ``on_error``."""
    for clip in clips:
        try:
            wave = audio_io.load_audio(clip.data if clip.data is not None else clip.path, sample_rate, name=clip.name)
        except ValueError as err:
            on_error(clip.name, err)
            continue
        yield clip.entry(), wave


def window_spans(num_samples: int, length: int, hop: int) -> list[tuple[int, int]]:
    """Sample spans ``[start, end)`` of the windows that cover a clip; a short clip is one window."""
    if num_samples <= length:
        return [(0, num_samples)]
    return [(s, s + length) for s in audio_io.window_starts(num_samples, length, hop)]


def cut_windows(wave: torch.Tensor, sample_rate: int, window_seconds: float, hop_seconds: float) -> list[Window]:
    """Cut a mono waveform [T] into windows ``window_seconds`` long, ``hop_seconds`` apart, the last one ending
    at the end (a clip shorter than one window is one window)."""
    if window_seconds <= 0 or hop_seconds <= 0:
        raise ValueError(f"window_seconds and hop_seconds must be positive, got {window_seconds}, {hop_seconds}")
    length, hop = round(window_seconds * sample_rate), max(1, round(hop_seconds * sample_rate))
    return [Window(s / sample_rate, e / sample_rate, wave[s:e]) for s, e in window_spans(len(wave), length, hop)]


@lru_cache(maxsize=256)
def _member_offsets(shard: str, mtime_ns: int) -> dict[str, tuple[int, int]]:
    with tarfile.open(shard) as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}


def read_member(shard: str | Path, member: str) -> bytes:
    """Bytes of one member of an uncompressed tar, read at its offset (the member table is cached per shard).

    Raises:
        ValueError: the shard or the member does not exist.
    """
    shard = Path(shard)
    if not shard.is_file():
        raise ValueError(f"{shard}: no such shard")
    offsets = _member_offsets(str(shard), shard.stat().st_mtime_ns)
    if member not in offsets:
        raise ValueError(f"{shard}: no member {member!r}")
    offset, size = offsets[member]
    with open(shard, "rb") as f:
        f.seek(offset)
        return f.read(size)


def embed_windows(
    model: ClapModel,
    items: Iterable[tuple[dict[str, Any], torch.Tensor]],
    *,
    window_seconds: float | None = None,
    hop_seconds: float | None = None,
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    total: int | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Embed recordings window by window, streaming (memory holds a few batches of audio, not the collection).

    Args:
        model: The encoder.
        items: ``(metadata, waveform [T] at model.sample_rate)`` per recording; each window's metadata is a
            copy with ``start``, ``end`` and ``duration`` [s] filled in.
        window_seconds: Window length [s] (default: the model's clip length).
        hop_seconds: Hop between windows [s] (default: the model's hop).
        batch_size: Windows per forward pass.
        total: Number of recordings, for the progress bar.

    Returns:
        Embeddings [N windows, D] and their metadata, in input order.
    """
    cfg, rate = model.config.audio, model.sample_rate
    window_seconds = window_seconds or cfg.clip_seconds
    hop_seconds = hop_seconds or cfg.hop_seconds
    chunk = 16 * batch_size  # windows decoded ahead of the model
    parts: list[np.ndarray] = []
    rows: list[dict[str, Any]] = []
    waves: list[torch.Tensor] = []

    def flush() -> None:
        if waves:
            parts.append(model.embed_audio(waves, batch_size=batch_size, autocast_dtype=autocast_dtype))
            waves.clear()

    for meta, wave in progress_bar(items, desc="embed", unit="clip", total=total, disable=not progress):
        duration = len(wave) / rate
        for w in cut_windows(wave, rate, window_seconds, hop_seconds):
            waves.append(w.wave)
            rows.append({**meta, "start": w.start, "end": w.end, "duration": duration})
        if len(waves) >= chunk:
            flush()
    flush()
    emb = np.concatenate(parts) if parts else np.zeros((0, model.embed_dim), np.float32)
    return emb, rows
