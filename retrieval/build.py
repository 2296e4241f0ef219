"""An index folder from the parts written by ``retrieval embed``.

The layout is chosen for the total number of windows (``index: auto`` → ``clapkit.index.choose_index``);
IVF layouts are trained on a seeded sample drawn across all parts, then every part is added in turn, so
memory holds the index plus one part. Finally the query-time defaults (nprobe / efSearch) are tuned to
``target_recall`` on 256 sampled windows (``AudioIndex.tune``).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from clapkit.index import AudioIndex, ModelInfo
from clapkit.progress import progress_bar
from retrieval.config import BuildConfig
from retrieval.embed import FinishedPart, finished_parts

__all__ = ["build_index"]


def _training_sample(parts: list[FinishedPart], counts: list[int], size: int, seed: int) -> np.ndarray:
    """``size`` rows drawn uniformly without replacement across all parts [size, D]."""
    total = sum(counts)
    rows = np.sort(np.random.default_rng(seed).choice(total, min(size, total), replace=False))
    offsets = np.cumsum([0, *counts])
    chunks = []
    for part, lo, hi in zip(parts, offsets[:-1], offsets[1:]):
        mine = rows[(rows >= lo) & (rows < hi)] - lo
        if len(mine):
            chunks.append(np.load(part.embeddings, mmap_mode="r")[mine])
    return np.concatenate(chunks)


def build_index(cfg: BuildConfig) -> dict[str, Any]:
    """Build and save the index; returns a summary (count, layout, seconds).

    Raises:
        ValueError: missing or unfinished parts (unless ``allow_partial``), or nothing to index.
    """
    if not cfg.parts or not cfg.out:
        raise ValueError("build: set `parts` (a folder written by `retrieval embed`) and `out` (the index folder)")
    plan, parts = finished_parts(cfg.parts)
    missing = len(plan["parts"]) - len(parts)
    if missing and not cfg.allow_partial:
        raise ValueError(
            f"{cfg.parts}: {missing} of {len(plan['parts'])} parts are not embedded yet; finish "
            "`python -m retrieval embed` (it resumes) or set allow_partial"
        )
    counts = [int(np.load(p.embeddings, mmap_mode="r").shape[0]) for p in parts]
    total = sum(counts)
    if total == 0:
        raise ValueError(f"{cfg.parts}: the finished parts hold no embeddings")
    info = ModelInfo(**plan["model"])
    index = AudioIndex(
        info.embed_dim,
        index=cfg.index,
        model_info=info,
        memory_budget=cfg.memory_budget,
        expected_size=total,
        train_size=cfg.train_size,
        nprobe=cfg.nprobe,
        ef_search=cfg.ef_search or 64,
        seed=cfg.seed,
    )
    plan_ = index.prepare(total)
    if index.train_points:
        index.train(_training_sample(parts, counts, index.train_points, cfg.seed))
    for part in progress_bar(parts, desc="index parts", unit="part"):
        emb = np.load(part.embeddings)
        with open(part.metadata) as f:
            rows = [json.loads(line) for line in f]
        index.add_embeddings(emb, rows)
    tuned = {}
    if cfg.target_recall is not None and cfg.nprobe is None and cfg.ef_search is None:
        tuned = index.tune(_training_sample(parts, counts, 256, cfg.seed + 1), target_recall=cfg.target_recall)
    index.window = {"seconds": plan["window_seconds"], "hop_seconds": plan["hop_seconds"]}
    index.save(cfg.out)
    summary = {"count": len(index), "parts": len(parts), "plan": asdict(plan_), "tuned": tuned}
    return {**summary, "out": str(Path(cfg.out))}
