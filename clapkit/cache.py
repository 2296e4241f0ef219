"""Frozen-tower outputs computed once and reused: on disk (``FeatureStore``) or in memory during training
(``TowerCache``).

A frozen tower (``freeze: true``) is a fixed function in eval mode, so its output for an input is known once it
has been computed: storing it is exact, not an approximation. Only the trainable heads and projections then run
(``ClapModel.audio_from_tower`` / ``text_from_tower``), in a fraction of the time the towers take.

Both keep a row per key: the pooled vector [D] and the sequence [T_i, D_seq] trimmed to its real frames or
tokens; ``pad_trimmed`` pads rows back into a ``TowerOutput`` [B, T, D_seq] with its mask, exactly what the
tower returned for the real positions.

``FeatureStore`` maps string keys (a sample key, a file, a caption) to rows and is saved as one safetensors file;
with both towers of ``clapkit-small`` frozen, heads train and evaluate on it without the towers. Audio is given
as the model would see it: one clip-length window per key, zero- or repeat-padded as the model's ``AudioConfig``
says, with the number of real samples — the preprocessing of ``ClapModel.embed_audio`` (for audio no longer than
one clip) and of the shard reader in evaluation mode.

    store = audio_features(model, file_windows(paths, model.config.audio), progress=True)
    store.save("features/audio.safetensors")
    emb = embed_audio_features(model, FeatureStore.load("features/audio.safetensors"), paths)   # [N, D]

``TowerCache`` fills itself during training (``cache_frozen_towers: true``, train/clap.py). Text is keyed by the
caption; audio by a hash of the waveform window the reader produced (``waveform_keys``), so a different random
crop of the same clip is a different key and is computed afresh. Memory: each entry keeps the pooled vector and,
when the model has a head over the tower's sequence, the trimmed sequence. For clapkit-small in float16, a 10 s
clip ≈ 55 frames × 512 ≈ 56 KB and a caption ≈ 20 tokens × 384 ≈ 15 KB.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from clapkit.accel.precision import autocast
from clapkit.audio import AudioSource, fit_length, load_audio
from clapkit.config import AudioConfig
from clapkit.io import atomic_write_bytes
from clapkit.model import ClapModel
from clapkit.progress import progress_bar
from clapkit.towers import TowerOutput

__all__ = [
    "FeatureStore",
    "TowerCache",
    "audio_features",
    "embed_audio_features",
    "embed_text_features",
    "file_windows",
    "pad_trimmed",
    "text_features",
    "waveform_keys",
]

#: A batch of audio windows: keys [B], waveforms [B, S] at the model's rate, real samples per row [B].
AudioBatch = tuple[Sequence[str], torch.Tensor, torch.Tensor]


def pad_trimmed(pooled: torch.Tensor, seqs: Sequence[torch.Tensor], device: torch.device | str | None) -> TowerOutput:
    """Trimmed rows back into a tower's output, in float32 on ``device``.

    Args:
        pooled: Pooled features [B, D], in the storage dtype.
        seqs: Each row's real positions [T_i, D_seq], in the storage dtype.
        device: Where the output goes (None: stays on the CPU).

    Returns:
        ``TowerOutput`` with pooled [B, D], sequence [B, T, D_seq] zero-padded to the longest row, mask [B, T].
    """
    sequence = torch.nn.utils.rnn.pad_sequence(list(seqs), batch_first=True)  # [B, T, D_seq]
    lengths = torch.tensor([len(s) for s in seqs])
    mask = torch.arange(sequence.shape[1])[None, :] < lengths[:, None]  # [B, T]
    return TowerOutput(
        pooled=pooled.to(device, torch.float32), sequence=sequence.to(device, torch.float32), mask=mask.to(device)
    )


class FeatureStore:
    """Tower outputs by key, in memory (CPU), saved as one safetensors file.

    Args:
        keys: One key per row, unique.
        pooled: Pooled features [N, D].
        sequence: Every row's real positions, concatenated [ΣT_i, D_seq].
        lengths: Real positions per row [N].
    """

    def __init__(self, keys: Sequence[str], pooled: torch.Tensor, sequence: torch.Tensor, lengths: torch.Tensor):
        if len(set(keys)) != len(keys):
            raise ValueError("FeatureStore: keys must be unique")
        if pooled.shape[0] != len(keys) or lengths.shape != (len(keys),) or int(lengths.sum()) != sequence.shape[0]:
            raise ValueError(
                f"FeatureStore: {len(keys)} keys, pooled {tuple(pooled.shape)}, lengths {tuple(lengths.shape)} "
                f"summing to {int(lengths.sum())}, sequence {tuple(sequence.shape)}: expected one row per key and "
                "a sequence of sum(lengths) positions"
            )
        self.keys = list(keys)
        self.pooled = pooled
        self.sequence = sequence
        self.lengths = lengths.long()
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.lengths.cumsum(0)])
        self.index = {k: i for i, k in enumerate(self.keys)}

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self.index

    def missing(self, keys: Iterable[str]) -> list[str]:
        """The keys (in order, without repeats) that the store does not hold."""
        return [k for k in dict.fromkeys(keys) if k not in self.index]

    def rows(self, keys: Sequence[str]) -> list[int]:
        """Row index of each key; ``KeyError`` names the first key that is missing."""
        try:
            return [self.index[k] for k in keys]
        except KeyError as err:
            raise KeyError(
                f"feature store: no features for {err.args[0]!r}; compute them first (audio_features / text_features)"
            ) from None

    def batch(self, keys: Sequence[str], device: torch.device | str | None = None) -> TowerOutput:
        """``TowerOutput`` of ``keys``: pooled [B, D], sequence [B, T, D_seq] padded with zeros, mask [B, T]."""
        rows = self.rows(keys)
        seqs = [self.sequence[self.offsets[r] : self.offsets[r + 1]] for r in rows]
        return pad_trimmed(self.pooled[rows], seqs, device)

    def merge(self, other: FeatureStore) -> FeatureStore:
        """A store with the rows of both (``other`` must hold only new keys)."""
        if not len(other):
            return self
        if not len(self):
            return other
        clash = [k for k in other.keys if k in self.index]
        if clash:
            raise ValueError(f"FeatureStore.merge: {len(clash)} keys in both stores, e.g. {clash[0]!r}")
        if self.pooled.shape[1:] != other.pooled.shape[1:]:
            raise ValueError("FeatureStore.merge: the stores hold features of different widths")
        return FeatureStore(
            self.keys + other.keys,
            torch.cat([self.pooled, other.pooled.to(self.pooled.dtype)]),
            torch.cat([self.sequence, other.sequence.to(self.sequence.dtype)]),
            torch.cat([self.lengths, other.lengths]),
        )

    def subset(self, keys: Sequence[str]) -> FeatureStore:
        """A store with only ``keys`` (in that order)."""
        rows = self.rows(list(dict.fromkeys(keys)))
        seqs = [self.sequence[self.offsets[r] : self.offsets[r + 1]] for r in rows]
        width = self.sequence.shape[1]
        return FeatureStore(
            [self.keys[r] for r in rows],
            self.pooled[rows],
            torch.cat(seqs) if seqs else self.sequence.new_zeros(0, width),
            self.lengths[rows],
        )

    def save(self, path: str | Path) -> Path:
        """One safetensors file: tensors ``pooled``, ``sequence``, ``lengths``; the keys in its metadata."""
        tensors = {"pooled": self.pooled.contiguous(), "sequence": self.sequence.contiguous(), "lengths": self.lengths}
        return atomic_write_bytes(path, save(tensors, metadata={"keys": json.dumps(self.keys)}))

    @classmethod
    def load(cls, path: str | Path) -> FeatureStore:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no feature store; compute it with audio_features / text_features and save()")
        with safe_open(path, framework="pt") as f:
            keys = json.loads(f.metadata()["keys"])
            tensors = {name: f.get_tensor(name) for name in ("pooled", "sequence", "lengths")}
        return cls(keys, tensors["pooled"], tensors["sequence"], tensors["lengths"])

    @classmethod
    def empty(cls, dim: int = 0, seq_dim: int = 0, dtype: torch.dtype = torch.float32) -> FeatureStore:
        return cls([], torch.zeros(0, dim, dtype=dtype), torch.zeros(0, seq_dim, dtype=dtype), torch.zeros(0))

    @classmethod
    def from_outputs(cls, keys: Sequence[str], outputs: Sequence[TowerOutput], dtype: torch.dtype) -> FeatureStore:
        """Rows from tower outputs (one ``TowerOutput`` per batch, keys in batch order)."""
        pooled, seqs, lengths = [], [], []
        for out in outputs:
            pooled.append(out.pooled.detach().to("cpu", dtype))
            for row, mask in zip(out.sequence, out.mask):
                seqs.append(row[mask.to(row.device)].detach().to("cpu", dtype))
                lengths.append(int(mask.sum()))
        if not pooled:
            return cls.empty(dtype=dtype)
        return cls(keys, torch.cat(pooled), torch.cat(seqs), torch.tensor(lengths, dtype=torch.long))


def waveform_keys(audio: torch.Tensor, lengths: torch.Tensor | None = None) -> list[str]:
    """A content hash per waveform row [B, T] (CPU tensors; run before the batch moves to the GPU)."""
    rows = audio.detach().cpu().contiguous()
    keys = []
    for i, row in enumerate(rows):
        h = hashlib.blake2b(row.numpy().tobytes(), digest_size=16)
        if lengths is not None:
            h.update(int(lengths[i]).to_bytes(8, "little"))
        keys.append(h.hexdigest())
    return keys


class TowerCache:
    """Frozen-tower outputs by key, kept on the CPU while training (filled as inputs come).

    Args:
        keep_sequence: Also keep the frame/token sequence (needed when a head runs over it).
        max_items: Entries kept; later new inputs are computed every time they come.
        dtype: Storage dtype (``torch.float16`` halves the memory of float32).
    """

    def __init__(self, keep_sequence: bool, max_items: int = 100_000, dtype: torch.dtype = torch.float16) -> None:
        self.keep_sequence = keep_sequence
        self.max_items = max_items
        self.dtype = dtype
        self._store: dict[Hashable, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def __call__(
        self, keys: Sequence[Hashable], compute: Callable[[list[int]], TowerOutput], device: torch.device
    ) -> TowerOutput:
        """Tower output for ``keys``; ``compute(indices)`` runs the tower on the inputs not cached yet.

        Returns:
            ``TowerOutput`` with pooled [B, D]; sequence [B, T, D_seq] and mask [B, T] padded to the longest
            entry (a [B, 1, 1] placeholder when sequences are not kept).
        """
        missing = [i for i, k in enumerate(keys) if k not in self._store]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        if missing:
            with torch.no_grad():
                out = compute(missing)
            for j, i in enumerate(missing):
                seq = out.sequence[j][out.mask[j]].to("cpu", self.dtype) if self.keep_sequence else None
                entry = (out.pooled[j].to("cpu", self.dtype), seq)
                fresh[i] = entry
                if len(self._store) < self.max_items:
                    self._store[keys[i]] = entry
        entries = [fresh[i] if i in fresh else self._store[k] for i, k in enumerate(keys)]
        # Back to float32 before stacking: under CPU autocast (bf16-mixed training) stacking float16 tensors
        # fails ("Unexpected floating ScalarType in at::autocast::prioritize"); the output is float32 anyway.
        pooled = torch.stack([e[0].float() for e in entries])  # [B, D]
        if not self.keep_sequence:
            pooled = pooled.to(device)
            ones = torch.ones(len(keys), 1, dtype=torch.bool, device=device)
            return TowerOutput(pooled=pooled, sequence=pooled[:, None, :1], mask=ones)
        return pad_trimmed(pooled, [e[1].float() for e in entries], device)


def _check_frozen(model: ClapModel, side: str) -> None:
    tower = model.config.audio_tower if side == "audio" else model.config.text_tower
    if not tower.freeze:
        raise ValueError(
            f"{model.config.name or 'model'}: the {side} tower ({tower.name}) is trainable, so its stored outputs "
            f"would go stale; set {side}_tower.freeze: true to train on stored features"
        )


def file_windows(
    sources: Sequence[AudioSource],
    audio: AudioConfig,
    *,
    keys: Sequence[str] | None = None,
    batch_size: int = 16,
) -> Iterator[AudioBatch]:
    """Batches of one window per file, preprocessed as ``ClapModel.embed_audio`` does for a single window.

    Args:
        sources: Files (or anything ``load_audio`` takes) of at most one clip (``audio.clip_seconds``) each.
        audio: The model's audio config (rate, clip length, padding).
        keys: Key per source (default: ``str(source)``).
        batch_size: Windows per batch.

    Raises:
        ValueError: a source longer than one clip (its embedding would average several windows).
    """
    keys = [str(s) for s in sources] if keys is None else list(keys)
    if len(keys) != len(sources):
        raise ValueError(f"file_windows: {len(sources)} sources but {len(keys)} keys")
    clip = audio.clip_samples
    pending: list[tuple[str, torch.Tensor, int]] = []
    for key, source in zip(keys, sources):
        wave = load_audio(source, audio.sample_rate, name=key)
        if len(wave) > clip:
            raise ValueError(
                f"{key}: {len(wave) / audio.sample_rate:.2f} s is longer than the model's {audio.clip_seconds} s clip; "
                "stored features hold one window per key — cut the audio or embed it with embed_audio"
            )
        # Zero padding is masked out; repeat padding is content (as ClapModel.embed_audio).
        real = len(wave) if audio.pad == "zero" else clip
        pending.append((key, fit_length(wave, clip, pad=audio.pad), real))
        if len(pending) == batch_size:
            yield _stack(pending)
            pending = []
    if pending:
        yield _stack(pending)


def _stack(items: list[tuple[str, torch.Tensor, int]]) -> AudioBatch:
    return [k for k, _, _ in items], torch.stack([w for _, w, _ in items]), torch.tensor([n for _, _, n in items])


@torch.inference_mode()
def audio_features(
    model: ClapModel,
    batches: Iterable[AudioBatch],
    *,
    dtype: torch.dtype = torch.float32,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    total: int | None = None,
    progress: bool = False,
) -> FeatureStore:
    """Run the frozen audio tower over batches of windows and keep its outputs.

    Args:
        model: A model whose audio tower is frozen.
        batches: ``(keys [B], wave [B, S], lengths [B])`` — from ``file_windows`` or a shard reader in evaluation mode.
        dtype: Storage dtype (``float32`` keeps the tower's output exactly).
        autocast_dtype: Run the tower under autocast (e.g. ``torch.bfloat16``); the stored features then match
            ``embed_audio(..., autocast_dtype=...)``, not the float32 model. A model whose ``audio_tower.autocast``
            is set runs its tower that way without this, and its own ``embed_audio`` matches the stored features.
        channels_last: Run convolutional towers in channels-last memory layout (the same numbers, often faster
            on CPU); the tower's layout is restored afterwards.
        total: Number of windows, for the progress bar.
    """
    _check_frozen(model, "audio")
    was_training = model.training
    model.eval()
    device = model.device
    tower = model.audio_tower
    if channels_last:
        tower.to(memory_format=torch.channels_last)
    keys: list[str] = []
    outputs: list[TowerOutput] = []
    bar = progress_bar(total=total, desc="audio features", unit="clip", disable=not progress)
    try:
        for batch_keys, wave, lengths in batches:
            with autocast(device, autocast_dtype):
                out = model.run_audio_tower(wave.to(device), lengths.to(device))
            outputs.append(TowerOutput(out.pooled.float(), out.sequence.float(), out.mask))
            keys.extend(batch_keys)
            bar.update(len(batch_keys))
    finally:
        bar.close()
        if channels_last:
            tower.to(memory_format=torch.contiguous_format)
        model.train(was_training)
    return FeatureStore.from_outputs(keys, outputs, dtype)


@torch.inference_mode()
def text_features(
    model: ClapModel,
    texts: Iterable[str],
    *,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> FeatureStore:
    """Run the frozen text tower over distinct texts (keys = the texts) and keep its outputs.

    Texts are sorted by length before batching, so little compute goes to padding; a text's features do not
    depend on the others in its batch (the attention mask hides padding).
    """
    _check_frozen(model, "text")
    texts = list(dict.fromkeys(texts))
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"text #{i}: empty or non-string caption {t!r}")
    was_training = model.training
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    keys, outputs = [], []
    try:
        for start in progress_bar(range(0, len(order), batch_size), desc="text features", disable=not progress):
            chunk = [texts[i] for i in order[start : start + batch_size]]
            tokens = model.tokenize(chunk)
            ids, mask = tokens["input_ids"].to(model.device), tokens["attention_mask"].to(model.device)
            outputs.append(model.text_tower(ids, mask))
            keys.extend(chunk)
    finally:
        model.train(was_training)
    return FeatureStore.from_outputs(keys, outputs, dtype)


@torch.inference_mode()
def _embed(fn, store: FeatureStore, keys: Sequence[str], batch_size: int, device) -> np.ndarray:
    out = []
    for start in range(0, len(keys), batch_size):
        out.append(fn(store.batch(keys[start : start + batch_size], device)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def embed_audio_features(
    model: ClapModel, store: FeatureStore, keys: Sequence[str], *, batch_size: int = 256
) -> np.ndarray:
    """Audio embeddings [N, D] (L2-normalised) of stored tower outputs: head → projection, as ``embed_audio``."""
    was_training = model.training
    model.eval()
    try:
        return _embed(model.audio_from_tower, store, list(keys), batch_size, model.device)
    finally:
        model.train(was_training)


def embed_text_features(
    model: ClapModel, store: FeatureStore, texts: Sequence[str], *, batch_size: int = 1024
) -> np.ndarray:
    """Text embeddings [N, D] (L2-normalised) of stored tower outputs: head → projection, as ``embed_text``."""
    was_training = model.training
    model.eval()
    try:
        return _embed(model.text_from_tower, store, list(texts), batch_size, model.device)
    finally:
        model.train(was_training)
