"""Caching the outputs of frozen towers across training steps.

A frozen tower (``freeze: true`` in the model config) is a fixed function in eval mode, so its output for
an input it has seen before is known: caching it is exact, not an approximation. Text is keyed by the
caption; audio by a hash of the waveform window the reader produced, so a different random crop of the
same clip is a different key and is computed afresh. Only the trainable heads and projections then run
per step (``ClapModel.audio_from_tower`` / ``text_from_tower``).

Memory: each entry keeps the pooled vector and, when the model has a head over the tower's sequence, the
sequence trimmed to its real frames or tokens. For clapkit-small in float16, a 10 s clip ≈ 55 frames ×
512 ≈ 56 KB and a caption ≈ 20 tokens × 384 ≈ 15 KB.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Sequence

import torch

from clapkit.towers import TowerOutput

__all__ = ["TowerCache", "waveform_keys"]


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
    """Frozen-tower outputs by key, kept on the CPU.

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
        pooled = torch.stack([e[0] for e in entries]).to(device, torch.float32)  # [B, D]
        if not self.keep_sequence:
            ones = torch.ones(len(keys), 1, dtype=torch.bool, device=device)
            return TowerOutput(pooled=pooled, sequence=pooled[:, None, :1], mask=ones)
        seqs = [e[1] for e in entries]
        lengths = torch.tensor([len(s) for s in seqs])
        sequence = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True).to(device, torch.float32)  # [B, T, D]
        mask = (torch.arange(sequence.shape[1])[None, :] < lengths[:, None]).to(device)  # [B, T]
        return TowerOutput(pooled=pooled, sequence=sequence, mask=mask)
