"""An index folder from the parts written by ``retrieval embed``.

The layout is chosen for the total number of windows (``index: auto`` → ``clapkit.index.choose_index``);
IVF layouts are trained on a seeded sample drawn across all parts, then the parts are added: in turn, or with
``workers > 1`` by that many processes whose partial indexes are merged in part order (``clapkit.index.sharded``:
the same ids and search results). Finally the query-time defaults (nprobe / efSearch) are tuned to
``target_recall`` on 256 sampled windows, within ``max_query_ms`` per query if set (``AudioIndex.tune``); the
summary reports the chosen FAISS factory string, the setting, its measured recall@10 and query time.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from clapkit.index import AudioIndex, ModelInfo
from clapkit.index.sharded import PartFiles, add_parts
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
    add_parts(index, [PartFiles(p.embeddings, p.metadata) for p in parts], workers=cfg.workers)
    tuned = {}
    if cfg.target_recall is not None and cfg.nprobe is None and cfg.ef_search is None:
        queries = _training_sample(parts, counts, 256, cfg.seed + 1)
        tuned = index.tune(queries, target_recall=cfg.target_recall, max_query_ms=cfg.max_query_ms)
    index.window = {"seconds": plan["window_seconds"], "hop_seconds": plan["hop_seconds"]}
    index.save(cfg.out)
    summary = {
        "count": len(index),
        "parts": len(parts),
        "workers": cfg.workers,
        "index": index.key,
        "plan": asdict(plan_),
        "search_defaults": dict(index.search_defaults),
        "tuned": tuned,
    }
    return {**summary, "out": str(Path(cfg.out))}
