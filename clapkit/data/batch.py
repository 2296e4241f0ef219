"""Batches of the shard reader: tensors made in shared memory inside DataLoader workers, and :func:`collate`.

A batch is assembled in place: the reader decodes each clip straight into its row of a :func:`batch_tensor`, then
:func:`collate` gathers the texts and adds lengths and masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import default_collate, get_worker_info

__all__ = ["batch_tensor", "collate", "time_mask"]


def batch_tensor(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised tensor; inside a DataLoader worker it is made in shared memory (as ``default_collate``
    does), so handing the batch to the main process copies nothing."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def time_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """[B, size] bool, ``True`` on the first ``lengths[b]`` samples of row b."""
    mask = batch_tensor(len(lengths), size, dtype=torch.bool).fill_(True)  # cheaper than comparing B × T positions
    for row, n in enumerate(lengths.tolist()):
        mask[row, n:] = False
    return mask


def collate(
    samples: Sequence[dict[str, Any]], audio: torch.Tensor | None = None, counterfactual: torch.Tensor | None = None
) -> dict[str, Any]:
    """Gather decoded samples into a batch.

    Args:
        samples: Per sample ``length``, ``caption``, ``positives``, ``negatives``, ``labels``, ``key``,
            ``extra``; ``audio`` [T] unless the batch's audio is given; ``counterfactual_length`` (0: none) and,
            unless given, ``counterfactual`` [T] for batches with counterfactual audio.
        audio: The samples' audio already in one tensor [B, T] (the reader decodes straight into it).
        counterfactual: The same for their counterfactual audio [B, T] (zeros where a sample has none).

    Returns:
        ``audio`` [B, T] float32; ``lengths`` [B] samples of the clip before padding; ``audio_mask`` [B, T]
        (``True`` on those samples; with ``repeatpad`` the tiled copies are real audio too, so LAION-style
        models ignore the mask); ``captions`` (B strings); ``positives``, ``negatives``, ``labels`` (B lists
        of strings, of any length); ``keys``; ``extra`` (B dicts of the samples' other metadata fields).
        With counterfactual audio also ``counterfactual`` [B, T] float32 (crop / pad as ``audio``; zeros for
        samples without one), ``counterfactual_lengths`` [B] (0 for those) and ``has_counterfactual`` [B] bool.
    """
    if audio is None:
        # default_collate stacks straight into shared memory inside a DataLoader worker (one copy less per batch).
        audio = default_collate([s["audio"] for s in samples])  # [B, T]
    lengths = torch.tensor([s["length"] for s in samples], dtype=torch.long)  # [B]
    out: dict[str, Any] = {"audio": audio, "lengths": lengths, "audio_mask": time_mask(lengths, audio.shape[1])}
    for name, key in (("captions", "caption"), ("positives", "positives"), ("negatives", "negatives")):
        out[name] = [s[key] for s in samples]
    out["labels"] = [s["labels"] for s in samples]
    out["keys"] = [s["key"] for s in samples]
    out["extra"] = [s["extra"] for s in samples]
    if counterfactual is not None or "counterfactual_length" in samples[0]:
        if counterfactual is None:
            counterfactual = default_collate([s["counterfactual"] for s in samples])  # [B, T]
        cf_lengths = torch.tensor([s["counterfactual_length"] for s in samples], dtype=torch.long)  # [B]
        out.update(counterfactual=counterfactual, counterfactual_lengths=cf_lengths, has_counterfactual=cf_lengths > 0)
    return out
