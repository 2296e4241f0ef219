"""Indexes larger than one process can fill quickly: vectors added in parallel, and several indexes searched as one.

**Parallel add** (``add_parts``): the layout is fixed and trained once (on a sample), then worker processes each
add a contiguous run of parts to a copy of the empty layout and write it to disk; the main process merges the
partial indexes in part order (FAISS ``merge_from``) and inserts the metadata, so ids, vectors and search results
are those of adding the parts one by one. HNSW graphs cannot be merged: they are filled in the main process.

**Several indexes as one** (``IndexShards``): the folders of one collection built separately (a shard each),
searched with one query embedding and their top-k merged by score.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import json
import multiprocessing
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from clapkit.audio import AudioSource
from clapkit.index.audio_index import AudioIndex, check_one_query
from clapkit.index.records import Hit
from clapkit.progress import progress_bar

__all__ = ["IndexShards", "PartFiles", "add_parts", "open_index", "part_groups"]


@dataclass(frozen=True)
class PartFiles:
    """One part on disk: ``embeddings`` [N, D] (``.npy``) and ``metadata`` (``.jsonl``, one entry per row)."""

    embeddings: Path
    metadata: Path

    def count(self) -> int:
        return int(np.load(self.embeddings, mmap_mode="r").shape[0])

    def entries(self) -> list[dict[str, Any]]:
        with open(self.metadata) as f:
            return [json.loads(line) for line in f if line.strip()]


def part_groups(counts: Sequence[int], groups: int) -> list[range]:
    """Split parts (their vector counts) into at most ``groups`` contiguous runs of similar total size."""
    if not counts:
        return []
    groups = max(1, min(groups, len(counts)))
    bounds = np.cumsum([0, *counts])
    targets = [bounds[-1] * g / groups for g in range(1, groups)]
    cuts = sorted({int(np.abs(bounds - t).argmin()) for t in targets} - {0, len(counts)})  # nearest boundary
    edges = [0, *cuts, len(counts)]
    return [range(a, b) for a, b in itertools.pairwise(edges) if b > a]


def _fill(layout: bytes, parts: list[tuple[str, int]], normalize: bool, threads: int, out: str) -> str:
    """Worker: add each part's vectors (ids from its first id on) to a copy of ``layout``; write it to ``out``."""
    faiss.omp_set_num_threads(threads)
    index = faiss.deserialize_index(np.frombuffer(layout, dtype=np.uint8))
    for path, first in parts:
        x = np.ascontiguousarray(np.load(path), dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != index.d:
            raise ValueError(f"{path}: expected embeddings of shape [N, {index.d}], got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{path}: {int((~np.isfinite(x)).sum())} NaN/Inf values")
        if normalize:
            faiss.normalize_L2(x)
        index.add_with_ids(x, np.arange(first, first + len(x), dtype=np.int64))
    faiss.write_index(index, out)
    return out


def add_parts(index: AudioIndex, parts: Sequence[PartFiles], *, workers: int = 1, progress: bool = True) -> None:
    """Add every part's vectors and metadata to ``index`` (prepared and trained), in part order.

    With ``workers > 1`` the vectors are added by that many processes (each with its share of the CPU threads),
    then merged; the result is the same index as adding the parts one by one.
    """
    counts = [p.count() for p in parts]
    bar = progress_bar(total=len(parts), desc="index parts", unit="part", disable=not progress)
    if workers <= 1 or len(parts) < 2 or index.kind == "hnsw":
        for part in parts:
            index.add_embeddings(np.load(part.embeddings), part.entries())
            bar.update(1)
        bar.close()
        return
    layout = index.empty_layout()
    firsts = np.cumsum([0, *counts])[:-1] + len(index)
    groups = part_groups(counts, workers)
    threads = max(1, (os.cpu_count() or 1) // len(groups))
    context = multiprocessing.get_context("spawn")  # no fork after FAISS / torch have started OpenMP threads
    with (
        tempfile.TemporaryDirectory(prefix="clapkit-index-") as tmp,
        cf.ProcessPoolExecutor(len(groups), mp_context=context) as pool,
    ):
        futures = [
            pool.submit(
                _fill,
                layout,
                [(str(parts[i].embeddings), int(firsts[i])) for i in group],
                index.metric == "cosine",
                threads,
                str(Path(tmp) / f"group-{g:04d}.faiss"),
            )
            for g, group in enumerate(groups)
        ]
        try:
            for group, future in zip(groups, futures):  # merged in part order, as each finishes
                written = future.result()
                partial = faiss.read_index(written)
                os.unlink(written)
                start, size = int(firsts[group[0]]), sum(counts[i] for i in group)
                entries = [e for i in group for e in parts[i].entries()]
                index.merge_partial(partial, np.arange(start, start + size, dtype=np.int64), entries)
                bar.update(len(group))
        finally:
            for future in futures:
                future.cancel()
            bar.close()


class IndexShards:
    """Several index folders of one collection searched as one: merged top-k by score.

    Every shard must hold the same model's vectors with the same metric (checked); a query is embedded once
    (with the first shard's model) and searched in each shard. Each hit's ``fields["shard"]`` names its shard.

    Args:
        indexes: ``{name: AudioIndex}`` or a list of indexes (named ``0``, ``1``, …).
    """

    def __init__(self, indexes: dict[str, AudioIndex] | Sequence[AudioIndex]) -> None:
        named = dict(indexes) if isinstance(indexes, dict) else {str(i): x for i, x in enumerate(indexes)}
        if not named:
            raise ValueError("IndexShards: no indexes given")
        first_name, first = next(iter(named.items()))
        for name, index in named.items():
            if (index.dim, index.metric) != (first.dim, first.metric):
                raise ValueError(
                    f"shard {name!r}: dim {index.dim} / {index.metric} differs from shard {first_name!r}: "
                    f"dim {first.dim} / {first.metric}"
                )
            a, b = index.model_info, first.model_info
            if (a is None) != (b is None) or (a is not None and a.weights_sha256 != b.weights_sha256):
                raise ValueError(f"shard {name!r} was built with another model than shard {first_name!r}")
        self.shards = named

    @classmethod
    def load(cls, folders: Sequence[str | os.PathLike], **kwargs: Any) -> IndexShards:
        """Load each folder (``AudioIndex.load`` kwargs apply), named by its folder name."""
        loaded = {}
        for folder in folders:
            name = Path(folder).name
            if name in loaded:
                name = str(folder)
            loaded[name] = AudioIndex.load(folder, **kwargs)
        return cls(loaded)

    def __len__(self) -> int:
        return sum(len(x) for x in self.shards.values())

    @property
    def model(self):
        return next(iter(self.shards.values())).model

    def attach(self, model) -> None:
        """Use ``model`` for text and audio queries in every shard (refused unless it built them)."""
        for index in self.shards.values():
            index.attach(model)

    def load_model(self, device: str | torch.device | None = None):
        """Load the first shard's model (``AudioIndex.load_model``) and attach it to every shard."""
        model = next(iter(self.shards.values())).load_model(device)
        self.attach(model)
        return model

    @property
    def dim(self) -> int:
        return next(iter(self.shards.values())).dim

    @property
    def model_info(self):
        return next(iter(self.shards.values())).model_info

    def get(self, ids: Sequence[int], shard: str | None = None) -> list:
        """Metadata of ``ids`` in shard ``shard`` (ids are per shard; a hit's ``fields["shard"]`` names it).

        Raises:
            ValueError: an unknown shard.
        """
        if shard not in self.shards:
            raise ValueError(f"shard {shard!r}: ids are per shard; valid shards are {', '.join(self.shards)}")
        return self.shards[shard].get(ids)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary: the total count, the common dim / metric / model, and each shard's own."""
        parts = {name: index.describe() for name, index in self.shards.items()}
        first = next(iter(parts.values()))
        return {
            "count": len(self),
            "dim": first["dim"],
            "metric": first["metric"],
            "index": sorted({d["index"] for d in parts.values() if d["index"]}),
            "kind": "shards",
            "model": first["model"],
            "shards": parts,
        }

    def search(
        self,
        *,
        text: str | Sequence[str] | None = None,
        audio: AudioSource | Sequence[AudioSource] | None = None,
        embedding: np.ndarray | torch.Tensor | None = None,
        k: int = 10,
        sample_rate: int | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> list[list[Hit]]:
        """As ``AudioIndex.search``, over every shard: the best ``k`` hits of all shards per query."""
        check_one_query(text, audio, embedding)
        first = next(iter(self.shards.values()))
        if embedding is None:
            embedding = first.embed_queries(text=text, audio=audio, sample_rate=sample_rate)
        per_shard = {
            name: index.search(embedding=embedding, k=k, nprobe=nprobe, ef_search=ef_search)
            for name, index in self.shards.items()
        }
        queries = len(next(iter(per_shard.values())))
        merged = []
        for q in range(queries):
            hits = [
                replace(h, fields={**h.fields, "shard": name}) for name, lists in per_shard.items() for h in lists[q]
            ]
            merged.append(sorted(hits, key=lambda h: -h.score)[:k])  # stable: ties keep shard order
        return merged


def open_index(spec: str | os.PathLike, **kwargs: Any) -> AudioIndex | IndexShards:
    """``DIR`` → ``AudioIndex.load(DIR)``; ``DIR1,DIR2,…`` → the folders as one ``IndexShards`` (the form the
    ``clapkit search`` argument and the service's ``--index NAME=…`` take). ``AudioIndex.load`` kwargs apply."""
    folders = [f for f in str(spec).split(",") if f]
    if len(folders) > 1:
        return IndexShards.load(folders, **kwargs)
    return AudioIndex.load(spec, **kwargs)
