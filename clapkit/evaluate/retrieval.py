"""Text↔audio retrieval in the AudioCaps / Clotho protocol: R@1, R@5, R@10, mAP@10 and ranks.

Every audio clip has 1–5 captions. Text→audio ranks, for each caption, its one clip among all clips;
audio→text ranks, for each clip, all captions and looks at where its own captions land: R@k counts a
clip when its best-ranked caption is in the top k, and mAP@10 is the average precision of its
captions over the top 10, divided by its number of captions (Mei et al.'s protocol, as LAION-CLAP's
``evaluate_clotho_audiocaps`` describes it, with the caption ranks sorted before precision is taken).

Similarities are computed block by block and never held whole, so 10k clips × 50k captions needs a
few hundred MB at most. Ties count against the model: an item scored equal to the right answer
is ranked before it.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from clapkit.evaluate.report import resolve_path
from clapkit.model import ClapModel
from clapkit.progress import progress_bar

__all__ = [
    "RetrievalSet",
    "caption_owner_from_groups",
    "evaluate_retrieval",
    "load_retrieval_set",
    "retrieval_metrics",
    "retrieval_ranks",
]

KS: tuple[int, ...] = (1, 5, 10)
MAP_AT = 10


@dataclass
class RetrievalSet:
    """Clips and their captions.

    Attributes:
        audio: One path per clip [N_a].
        captions: Every caption [N_t].
        caption_audio: Index into ``audio`` of each caption's clip [N_t].
    """

    audio: list[str]
    captions: list[str]
    caption_audio: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def _as_tensor(x: np.ndarray | torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t.to(device=device or t.device, dtype=torch.float32)


def _check(audio_emb: torch.Tensor, text_emb: torch.Tensor, caption_audio: torch.Tensor) -> None:
    if audio_emb.ndim != 2 or text_emb.ndim != 2 or audio_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(
            f"retrieval: expected audio [N_a, D] and text [N_t, D] embeddings, got {tuple(audio_emb.shape)} "
            f"and {tuple(text_emb.shape)}"
        )
    if caption_audio.shape != (text_emb.shape[0],):
        raise ValueError(
            f"retrieval: caption_audio must give one clip index per caption ({text_emb.shape[0]}), "
            f"got shape {tuple(caption_audio.shape)}"
        )
    if len(caption_audio) and (caption_audio.min() < 0 or caption_audio.max() >= audio_emb.shape[0]):
        raise ValueError(f"retrieval: caption_audio indices must lie in [0, {audio_emb.shape[0]})")
    counts = torch.bincount(caption_audio, minlength=audio_emb.shape[0])
    if (counts == 0).any():
        first = int((counts == 0).nonzero()[0])
        raise ValueError(f"retrieval: clip #{first} has no caption; every clip needs at least one")


def retrieval_ranks(
    audio_emb: np.ndarray | torch.Tensor,
    text_emb: np.ndarray | torch.Tensor,
    caption_audio: np.ndarray | torch.Tensor,
    *,
    block_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """0-based ranks in both directions from one blockwise pass over the similarity matrix.

    Args:
        audio_emb: Clip embeddings [N_a, D].
        text_emb: Caption embeddings [N_t, D].
        caption_audio: Clip index of each caption [N_t].
        block_size: Clips scored per block (memory: block_size × N_t floats, a few of them).

    Returns:
        text→audio rank of each caption's clip [N_t]; audio→text ranks of each clip's own captions
        [N_a, M] (M = most captions of any clip; each row ascending, padded with -1); captions per clip [N_a].
    """
    a, t = _as_tensor(audio_emb, device), _as_tensor(text_emb, device)
    owner = torch.as_tensor(caption_audio, dtype=torch.long, device=a.device)
    _check(a, t, owner)
    n_audio = a.shape[0]
    counts = torch.bincount(owner, minlength=n_audio)  # [N_a]
    most = int(counts.max()) if n_audio else 0
    # Caption ids of each clip, padded with -1: [N_a, M].
    order = torch.argsort(owner, stable=True)
    slot = torch.arange(len(owner), device=a.device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    own_ids = torch.full((n_audio, most), -1, dtype=torch.long, device=a.device)
    own_ids[owner[order], slot] = order
    true = (t * a[owner]).sum(-1)  # [N_t] score of each caption with its own clip
    t2a = torch.zeros(len(t), dtype=torch.long, device=a.device)
    a2t = []
    m = torch.arange(most, device=a.device)[None, :]
    rows = torch.arange(block_size, device=a.device)[:, None]
    for start in progress_bar(range(0, n_audio, block_size), desc="retrieval ranks", disable=not progress):
        sim = a[start : start + block_size] @ t.T  # [b, N_t]
        ids = own_ids[start : start + block_size]
        ok = ids >= 0
        # Text→audio: other clips scoring a caption at least as high as its own clip does.
        at_least_true = sim >= true[None, :]
        at_least_true[rows[: len(ids)].expand_as(ids)[ok], ids[ok]] = False  # not the caption's own clip
        t2a += at_least_true.sum(0)
        # Audio→text: where each clip's own captions land among all captions.
        own = sim.gather(1, ids.clamp_min(0)).masked_fill(~ok, float("-inf"))  # [b, M]
        own, _ = own.sort(dim=1, descending=True)  # best own caption first; padding last
        at_least = torch.stack([(sim >= own[:, j : j + 1]).sum(1) for j in range(most)], 1)  # [b, M]
        own_at_least = (own[:, None, :] >= own[:, :, None]).sum(-1)  # [b, M], the clip's own among them
        # The j-th best own caption sits after the j better own captions and every other caption scored ≥ it.
        rank = m + (at_least - own_at_least)
        a2t.append(rank.masked_fill(~ok.sort(dim=1, descending=True).values, -1).cpu())
    a2t_ranks = torch.cat(a2t).numpy() if a2t else np.zeros((0, most), dtype=np.int64)
    return t2a.cpu().numpy(), a2t_ranks, counts.cpu().numpy()


def retrieval_metrics(
    audio_emb: np.ndarray | torch.Tensor,
    text_emb: np.ndarray | torch.Tensor,
    caption_audio: np.ndarray | torch.Tensor,
    *,
    block_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Text→audio and audio→text R@1/5/10, mAP@10, mean and median rank (1-based) from embeddings.

    Args:
        audio_emb: L2-normalised clip embeddings [N_a, D].
        text_emb: L2-normalised caption embeddings [N_t, D].
        caption_audio: Clip index of each caption [N_t]; every clip needs 1 or more captions.
    """
    t2a, a2t, counts = retrieval_ranks(
        audio_emb, text_emb, caption_audio, block_size=block_size, device=device, progress=progress
    )
    metrics: dict[str, float] = {"num_audio": len(counts), "num_captions": len(t2a)}
    for k in KS:
        metrics[f"text_to_audio_R@{k}"] = float(np.mean(t2a < k))
    metrics[f"text_to_audio_mAP@{MAP_AT}"] = float(np.mean(np.where(t2a < MAP_AT, 1.0 / (t2a + 1), 0.0)))
    metrics["text_to_audio_mean_rank"] = float(np.mean(t2a) + 1)
    metrics["text_to_audio_median_rank"] = float(np.floor(np.median(t2a)) + 1)

    best = a2t[:, 0]
    for k in KS:
        metrics[f"audio_to_text_R@{k}"] = float(np.mean(best < k))
    # Precision at each own caption inside the top 10: (its position among own captions) / (its rank + 1).
    position = np.arange(1, a2t.shape[1] + 1)[None, :]
    hit = (a2t >= 0) & (a2t < MAP_AT)
    precision = np.where(hit, position / np.maximum(a2t + 1, 1), 0.0)
    metrics[f"audio_to_text_mAP@{MAP_AT}"] = float(np.mean(precision.sum(1) / np.minimum(counts, MAP_AT)))
    metrics["audio_to_text_mean_rank"] = float(np.mean(best) + 1)
    metrics["audio_to_text_median_rank"] = float(np.floor(np.median(best)) + 1)
    return metrics


# ---------------------------------------------------------------------------- data sets on disk
def load_retrieval_set(path: str | Path, audio_root: str | Path | None = None) -> RetrievalSet:
    """Read clips and captions from a CSV or JSONL file.

    Accepted layouts (relative audio paths are resolved against ``audio_root``, default: the file's folder):

    - CSV, one row per caption: columns ``path`` (or ``file_name``) and ``caption``; rows of the same
      clip may repeat (AudioCaps style).
    - CSV, one row per clip: ``path`` (or ``file_name``) and ``caption_1`` … ``caption_5`` (Clotho style;
      empty cells are skipped).
    - JSONL: ``{"path": ..., "captions": [...]}`` (or ``"caption": "..."``) per line.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such retrieval file; expected a CSV or JSONL of audio paths and captions")
    root = Path(audio_root) if audio_root is not None else path.parent
    pairs: list[tuple[str, list[str]]] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: malformed JSON ({err})") from err
            caps = row.get("captions", row.get("caption"))
            caps = [caps] if isinstance(caps, str) else list(caps or [])
            audio = row.get("path", row.get("file_name"))
            if audio is None:
                raise ValueError(f"{path}:{n}: missing 'path'; each line needs 'path' and 'captions'")
            pairs.append((resolve_path(audio, root), caps))
    else:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            key = "path" if "path" in fields else "file_name" if "file_name" in fields else None
            cap_cols = sorted((c for c in fields if re.fullmatch(r"caption_\d+", c)), key=lambda c: int(c[8:]))
            if key is None or ("caption" not in fields and not cap_cols):
                raise ValueError(
                    f"{path}: expected columns 'path' (or 'file_name') and 'caption' (or caption_1…caption_5); "
                    f"found {fields}"
                )
            for row in reader:
                caps = [row["caption"]] if "caption" in fields else [row[c] for c in cap_cols]
                pairs.append((resolve_path(row[key], root), caps))
    index: dict[str, int] = {}
    captions: list[str] = []
    owner: list[int] = []
    for audio, caps in pairs:
        i = index.setdefault(audio, len(index))
        for c in caps:
            if isinstance(c, str) and c.strip():
                captions.append(c.strip())
                owner.append(i)
    if not captions:
        raise ValueError(f"{path}: no captions found")
    return RetrievalSet(audio=list(index), captions=captions, caption_audio=np.asarray(owner, dtype=np.int64))


def evaluate_retrieval(
    model: ClapModel,
    data: RetrievalSet,
    *,
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Embed a ``RetrievalSet`` with ``model`` and return ``retrieval_metrics``."""
    audio_emb = model.embed_audio(data.audio, batch_size=batch_size, autocast_dtype=autocast_dtype, progress=progress)
    text_emb = model.embed_text(data.captions, autocast_dtype=autocast_dtype, progress=progress)
    return retrieval_metrics(audio_emb, text_emb, data.caption_audio, device=model.device, progress=progress)


def caption_owner_from_groups(groups: Sequence[int]) -> np.ndarray:
    """Captions per clip (e.g. ``[5, 5, 3]``) → clip index of each caption [sum(groups)]."""
    return np.repeat(np.arange(len(groups)), np.asarray(groups, dtype=np.int64))
