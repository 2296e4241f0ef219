"""``AudioIndex``: nearest-neighbour search over audio embeddings (FAISS) with metadata in SQLite.

Index types (``index=``) are FAISS ``index_factory`` strings chosen by name: ``flat`` (exact inner product),
``hnsw``, ``ivf-flat``, ``ivf-pq``; ``auto`` picks one from the number of vectors and a memory budget (see
``clapkit.index.layout.choose_index``); any other FAISS factory string is used as given. Each row of the index
is one window of a recording; its metadata (path, tar member, window start/end, duration, captions, labels,
user fields) lives in a SQLite sidecar keyed by the same int64 id. A usage example is in ``clapkit.index``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
import torch

from clapkit.audio import load_audio
from clapkit.index.identity import ModelInfo, check_model, is_untrained_architecture, model_info, untrained_error
from clapkit.index.layout import (
    EF_SEARCH_LADDER,
    METRICS,
    IndexPlan,
    IndexPolicy,
    cheapest_setting,
    choose_index,
    default_nprobe,
    default_train_points,
    exact_graph_ids,
    kind_of,
    min_train_points,
    nprobe_ladder,
    search_params,
)
from clapkit.index.records import Entry, Hit
from clapkit.index.sidecar import Sidecar
from clapkit.index.sources import embed_windows
from clapkit.index.store import FAISS_FILE, METADATA_FILE, read_faiss, read_manifest, read_sidecar, write_folder
from clapkit.progress import progress_bar
from clapkit.units import parse_bytes

if TYPE_CHECKING:
    from clapkit.audio import AudioSource
    from clapkit.model import ClapModel

__all__ = ["AudioIndex"]

# Rows per FAISS add / SQLite insert call, so progress bars move and memory stays flat.
_ADD_CHUNK = 65_536


def check_one_query(text: Any, audio: Any, embedding: Any) -> None:
    """Refuse a search that gives not exactly one of ``text=``, ``audio=``, ``embedding=``."""
    given = [name for name, v in (("text", text), ("audio", audio), ("embedding", embedding)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of text=, audio=, embedding= (got {', '.join(given) or 'none'})")


class AudioIndex:
    """FAISS vectors + SQLite metadata for audio search by text, by audio, or by embedding.

    Create one with ``AudioIndex.for_model(model)`` (searches by text and audio embed the query with
    that model), ``AudioIndex(dim)`` for bare embeddings, ``AudioIndex.build(embeddings, entries)`` for a
    one-shot build, or ``AudioIndex.load(dir)``.

    The FAISS layout is fixed when the first vectors arrive (``add_*`` or ``train``): with
    ``index="auto"`` it is chosen from ``max(batch size, expected_size)`` and ``memory_budget``. IVF
    layouts are trained on a seeded random sample of that first batch (``train_size`` points).

    Searches may run from several threads at once; ``add_*``, ``remove`` and ``save`` must not overlap
    searches.

    Args:
        dim: Embedding width.
        index: ``auto``, a registered type (``flat``, ``hnsw``, ``ivf-flat``, ``ivf-pq``) or a FAISS
            ``index_factory`` string.
        metric: ``cosine`` (vectors and queries are L2-normalised, score = cosine), ``ip`` or ``l2``.
        model_info: Identity of the model behind the vectors (recorded in the manifest and checked on
            load and when a model is attached).
        memory_budget: For ``auto``: the most memory the index may take (bytes or ``"8GiB"``).
        expected_size: For ``auto``: the number of vectors the index will hold (default: the first batch).
        train_size: Training sample size for IVF layouts (default: 40 points per list, ≥ 10k for PQ).
        nprobe: Default IVF lists visited per query.
        ef_search: Default HNSW search breadth.
        policy: Thresholds of the ``auto`` choice.
        seed: Seed of the training sample.
    """

    def __init__(
        self,
        dim: int,
        *,
        index: str = "auto",
        metric: str = "cosine",
        model_info: ModelInfo | None = None,
        memory_budget: int | str = "8GiB",
        expected_size: int | None = None,
        train_size: int | None = None,
        nprobe: int | None = None,
        ef_search: int = 64,
        policy: IndexPolicy | None = None,
        seed: int = 0,
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric {metric!r}: valid metrics are {', '.join(METRICS)}")
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if model_info is not None and model_info.embed_dim != dim:
            raise ValueError(f"dim {dim} does not match the model's embed_dim {model_info.embed_dim}")
        if index.lower() != "auto":
            choose_index(1, dim, memory_budget, index=index, policy=policy)  # validate the name now
        self.dim = dim
        self.metric = metric
        self.index_spec = index
        self.model_info = model_info
        self.memory_budget = parse_bytes(memory_budget, "memory budget")
        self.expected_size = expected_size
        self.train_size = train_size
        self.policy = policy or IndexPolicy()
        self.seed = seed
        self.search_defaults: dict[str, int | None] = {"nprobe": nprobe, "ef_search": ef_search}
        self.model: ClapModel | None = None
        self.plan: IndexPlan | None = None
        self.window: dict[str, float] | None = None
        self.read_only = False
        self.model_dir: Path | None = None  # the model saved in the folder this index was loaded from
        self._faiss: faiss.Index | None = None
        self._kind = ""
        self._db = Sidecar()
        self._tombstones = np.zeros(0, dtype=np.int64)
        self._exclude: tuple | None = None  # (IDSelectorBatch, IDSelectorNot) over the tombstones
        self._next_id = 0
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_model(cls, model: ClapModel, *, source: str | os.PathLike | None = None, **kwargs: Any) -> AudioIndex:
        """An empty index for ``model``'s embeddings; ``source`` records how to load the model again."""
        index = cls(model.embed_dim, model_info=model_info(model, source), **kwargs)
        index.model = model
        return index

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        entries: Sequence[Entry | dict[str, Any] | str] | None = None,
        *,
        progress: bool = False,
        target_recall: float | None = 0.95,
        **kwargs: Any,
    ) -> AudioIndex:
        """An index over ``embeddings`` [N, D] with one metadata entry per row (``AudioIndex`` kwargs apply).

        Unless ``nprobe`` / ``ef_search`` are given, the search defaults are tuned (``tune``) on 256 of the
        embeddings to reach ``target_recall`` (``None``: keep the untuned defaults).
        """
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings: expected a 2-D [N, D] array, got shape {embeddings.shape}")
        kwargs.setdefault("expected_size", len(embeddings))
        index = cls(embeddings.shape[1], **kwargs)
        index.add_embeddings(embeddings, entries, progress=progress)
        if target_recall is not None and not {"nprobe", "ef_search"} & set(kwargs):
            rows = np.random.default_rng(index.seed).choice(len(embeddings), min(256, len(embeddings)), replace=False)
            index.tune(embeddings[np.sort(rows)], target_recall=target_recall)
        return index

    def attach(self, model: ClapModel) -> None:
        """Use ``model`` for text and audio queries.

        Raises:
            ValueError: the model is not the one the index was built with.
        """
        check_model(self.model_info, self.dim, model)
        self.model = model

    def load_model(self, device: str | torch.device | None = None) -> ClapModel:
        """Load the index's model, check it and attach it: the model saved in the index folder
        (``save(dir, with_model=True)``) if there is one, else the one named by ``model_info.source``."""
        from clapkit.factory import load  # imported on use: the model stack takes seconds to import

        if self.model is not None:
            return self.model
        if self.model_dir is not None:
            self.attach(load(self.model_dir, device=device))
        elif self.model_info is None:
            raise ValueError("this index records no model; attach one with index.attach(model)")
        elif is_untrained_architecture(self.model_info.source):
            raise untrained_error(self.model_info)  # loading it would draw new random layers
        else:
            self.attach(load(self.model_info.source, device=device))
        return self.model

    # ------------------------------------------------------------------ FAISS plumbing
    @property
    def kind(self) -> str:
        """``flat`` | ``hnsw`` | ``ivf`` | ``custom`` once built, else ``""``."""
        return self._kind

    @property
    def key(self) -> str | None:
        """The FAISS factory string once the layout is fixed."""
        return self.plan.key if self.plan else None

    def _ensure_faiss(self, n: int) -> None:
        if self._faiss is not None:
            return
        size = max(n, self.expected_size or 0)
        plan = choose_index(size, self.dim, self.memory_budget, index=self.index_spec, policy=self.policy)
        metric = METRICS[self.metric]
        index = faiss.index_factory(self.dim, plan.key, metric)
        # IVF keeps caller ids natively (and its remove_ids does not shift ids, which IndexIDMap2 assumes);
        # every other layout gets caller ids through IndexIDMap2.
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is None:
            index = faiss.index_factory(self.dim, f"IDMap2,{plan.key}", metric)
        elif isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQ):
            # Polysemous codes only serve Hamming-filtered search, which we do not use; training them is slow.
            faiss.downcast_index(ivf).do_polysemous_training = False
        self._faiss = index
        self._kind = kind_of(self._faiss)
        self.plan = plan
        if self._kind == "ivf" and self.search_defaults["nprobe"] is None:
            self.search_defaults["nprobe"] = default_nprobe(self._faiss)

    def prepare(self, n: int | None = None) -> IndexPlan:
        """Fix the FAISS layout now, for ``n`` vectors (default ``expected_size``); returns the plan."""
        with self._lock:
            self._ensure_faiss(n or 0)
        return self.plan

    @property
    def train_points(self) -> int:
        """Training sample size the layout wants (0 when it needs no training); ``prepare`` first."""
        if self._faiss is None:
            raise ValueError("the layout is not fixed yet; call prepare(n) first")
        return 0 if self._faiss.is_trained else (self.train_size or default_train_points(self._faiss))

    @property
    def is_trained(self) -> bool:
        return self._faiss is not None and bool(self._faiss.is_trained)

    def train(self, sample: np.ndarray) -> None:
        """Train an IVF layout on ``sample`` [M, D] (a no-op for layouts that need no training).

        Raises:
            ValueError: fewer training vectors than the layout needs.
        """
        x = self._vectors(sample, "training sample")
        with self._lock:
            self._ensure_faiss(len(x))
            if self._faiss.is_trained:
                return
            need = min_train_points(self._faiss)
            if len(x) < need:
                raise ValueError(
                    f"{self.key} needs at least {need} training vectors, got {len(x)}; add more vectors at once, "
                    "pass a larger sample to train(), or choose a smaller index (index='flat' or 'hnsw')"
                )
            size = self.train_size or default_train_points(self._faiss)
            if len(x) > size:
                rows = np.sort(np.random.default_rng(self.seed).choice(len(x), size, replace=False))
                x = x[rows]
            self._faiss.train(x)

    def _vectors(self, x: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{what}: expected shape [N, {self.dim}], got {tuple(x.shape)}")
        if not np.isfinite(x).all():
            raise ValueError(f"{what}: {int((~np.isfinite(x)).sum())} NaN/Inf values")
        x = np.ascontiguousarray(x)
        if self.metric == "cosine":
            x = x.copy()
            faiss.normalize_L2(x)
        return x

    # ------------------------------------------------------------------ adding and removing
    def __len__(self) -> int:
        return self._db.count()

    def add_embeddings(
        self,
        embeddings: np.ndarray | torch.Tensor,
        entries: Sequence[Entry | dict[str, Any] | str] | None = None,
        *,
        progress: bool = False,
    ) -> np.ndarray:
        """Add vectors [N, D] with their metadata; returns the new ids [N] (never reused).

        Raises:
            ValueError: wrong shape, non-finite values, a metadata count that differs from N, a read-only
                index, or too few vectors to train an IVF layout.
        """
        x = self._vectors(embeddings, "embeddings")
        if entries is not None and len(entries) != len(x):
            raise ValueError(f"got {len(x)} embeddings but {len(entries)} metadata entries; give one per row")
        # Rows are only read, so rows without metadata can share one empty Entry.
        rows = [Entry()] * len(x) if entries is None else [Entry.coerce(e, "metadata") for e in entries]
        if self.read_only:
            raise ValueError("this index was loaded read-only; load it with read_only=False to add to it")
        if not len(x):
            return np.zeros(0, dtype=np.int64)
        with self._lock:
            if not self.is_trained:
                self.train(x)
            ids = np.arange(self._next_id, self._next_id + len(x), dtype=np.int64)
            try:
                for s in progress_bar(
                    range(0, len(x), _ADD_CHUNK), desc="index add", unit="chunk", disable=not progress
                ):
                    self._db.insert(ids[s : s + _ADD_CHUNK], rows[s : s + _ADD_CHUNK])
                    self._faiss.add_with_ids(x[s : s + _ADD_CHUNK], ids[s : s + _ADD_CHUNK])
            except BaseException:
                self._db.rollback()
                self._drop_vectors(ids)
                raise
            self._next_id += len(x)
            self._db.commit()
        return ids

    def empty_layout(self) -> bytes:
        """The fixed, trained and still empty FAISS layout, serialized: what a worker process adds a share of
        the vectors to before ``merge_partial`` (``clapkit.index.sharded``)."""
        with self._lock:
            if self._faiss is None or not self._faiss.is_trained:
                raise ValueError("the layout is not fixed and trained yet; prepare(n) and train() first")
            if self._faiss.ntotal:
                raise ValueError(f"the index already holds {self._faiss.ntotal} vectors; a layout copy must be empty")
            if self._kind == "hnsw":
                raise ValueError("HNSW graphs cannot be merged; add their vectors in one process")
            data = faiss.serialize_index(self._faiss)
            # The copies come back as FAISS's reader builds them (IndexFlatIP, not IndexFlat with an IP metric, say);
            # merge_from wants the same classes on both sides, so this index becomes such a copy too.
            self._faiss = faiss.deserialize_index(data)
            return data.tobytes()

    def merge_partial(self, partial: faiss.Index, ids: np.ndarray, entries: Sequence[Entry | dict[str, Any]]) -> None:
        """Move the vectors of ``partial`` — a copy of ``empty_layout()`` holding ``ids`` (the next ids in
        order: ``len(self)`` onwards) — into this index, with their metadata. ``partial`` is left empty.

        Raises:
            ValueError: ids out of order, a count that differs from the entries, or another layout.
        """
        ids = np.asarray(ids, dtype=np.int64)
        rows = [Entry.coerce(e, "metadata") for e in entries]
        with self._lock:
            expected = np.arange(self._next_id, self._next_id + len(ids), dtype=np.int64)
            if len(rows) != len(ids) or partial.ntotal != len(ids) or not np.array_equal(ids, expected):
                raise ValueError(
                    f"partial index: {partial.ntotal} vectors, {len(ids)} ids and {len(rows)} entries; "
                    f"expected the ids {self._next_id}..{self._next_id + len(ids) - 1} in order, one entry each"
                )
            if self.read_only:
                raise ValueError("this index was loaded read-only; load it with read_only=False to add to it")
            if partial.d != self.dim or type(partial) is not type(self._faiss):
                raise ValueError(f"partial index: {type(partial).__name__} of dim {partial.d} is not this layout")
            try:
                self._db.insert(ids, rows)
                self._faiss.merge_from(partial, 0)  # 0: keep the partial's ids
            except BaseException:
                self._db.rollback()
                self._drop_vectors(ids)
                raise
            self._next_id += len(ids)
            self._db.commit()

    def add_audio(
        self,
        sources: Sequence[AudioSource],
        entries: Sequence[Entry | dict[str, Any] | None] | None = None,
        *,
        window_seconds: float | None = None,
        hop_seconds: float | None = None,
        sample_rate: int | None = None,
        batch_size: int = 16,
        autocast_dtype: torch.dtype | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Embed recordings window by window with the attached model and add every window.

        Args:
            sources: Paths, bytes or arrays (anything ``clapkit.load_audio`` takes).
            entries: Per-source metadata (captions, labels, fields); path, start, end and duration are filled
                in. Default: the path of path sources.
            window_seconds: Window length [s] (default: the model's clip length).
            hop_seconds: Hop between windows [s] (default: the model's hop).
            sample_rate: Rate of bare arrays (``None`` = the model's rate).

        Returns:
            The ids of all windows added, source by source.
        """
        model = self._require_model()
        window_seconds = window_seconds or model.config.audio.clip_seconds
        hop_seconds = hop_seconds or model.config.audio.hop_seconds
        if isinstance(sources, (str, os.PathLike, bytes, np.ndarray, torch.Tensor, tuple)):
            sources = [sources]
        entries = list(entries) if entries is not None else [None] * len(sources)
        if len(entries) != len(sources):
            raise ValueError(f"got {len(sources)} sources but {len(entries)} metadata entries")

        def items() -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
            for i, (source, meta) in enumerate(zip(sources, entries)):
                base = Entry.coerce(meta, f"entry {i}")
                if not base.path and isinstance(source, (str, os.PathLike)):
                    base.path = str(source)
                wave = load_audio(source, model.sample_rate, source_rate=sample_rate, name=base.path or None)
                yield asdict(base), wave

        emb, rows = embed_windows(
            model,
            items(),
            window_seconds=window_seconds,
            hop_seconds=hop_seconds,
            batch_size=batch_size,
            autocast_dtype=autocast_dtype,
            progress=progress,
            total=len(sources),
        )
        ids = self.add_embeddings(emb, rows, progress=progress)
        self.window = self.window or {"seconds": float(window_seconds), "hop_seconds": float(hop_seconds)}
        return ids

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Remove rows by id; returns how many existed. HNSW graphs cannot drop nodes: their ids are
        tombstoned and filtered out of every search."""
        if self.read_only:
            raise ValueError("this index was loaded read-only; load it with read_only=False to remove from it")
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        with self._lock:
            present = np.array(self._db.delete(ids.tolist()), dtype=np.int64)
            self._drop_vectors(present)
            self._db.commit()
        return len(present)

    def _drop_vectors(self, ids: np.ndarray) -> None:
        if not len(ids) or self._faiss is None:
            return
        if self._kind != "hnsw":
            try:
                self._faiss.remove_ids(ids)
                return
            except RuntimeError:  # a layout without removal (HNSW graphs, some custom ones): filter at search
                pass
        self._db.add_tombstones(ids.tolist())
        self._set_tombstones(np.union1d(self._tombstones, ids))

    def _set_tombstones(self, ids: np.ndarray) -> None:
        self._tombstones = ids
        if len(ids):
            batch = faiss.IDSelectorBatch(ids)
            self._exclude = (batch, faiss.IDSelectorNot(batch))
        else:
            self._exclude = None

    def get(self, ids: Sequence[int]) -> list[Entry | None]:
        """Metadata of ``ids`` (``None`` for unknown or removed ids)."""
        found = self._db.fetch(ids)
        return [found.get(int(i)) for i in ids]

    def entries(self) -> Iterator[tuple[int, Entry]]:
        """All ``(id, entry)`` pairs in id order."""
        return self._db.iter_entries()

    # ------------------------------------------------------------------ searching
    def _search_params(self, k: int, nprobe: int | None, ef_search: int | None) -> tuple[Any, list]:
        nprobe = nprobe or self.search_defaults.get("nprobe")
        ef_search = ef_search or self.search_defaults.get("ef_search")
        return search_params(self._faiss, k, nprobe, ef_search, self._exclude)

    def knn(
        self,
        queries: np.ndarray | torch.Tensor,
        k: int = 10,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw batched search: queries [Q, D] → (scores [Q, k], ids [Q, k]); missing results have id -1.

        Args:
            nprobe: IVF lists to visit (default ``search_defaults["nprobe"]``).
            ef_search: HNSW search breadth (default ``search_defaults["ef_search"]``; at least k).
        """
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        q = self._vectors(queries, "queries")
        if self._faiss is None or self._faiss.ntotal == 0:
            return np.zeros((len(q), k), np.float32), np.full((len(q), k), -1, np.int64)
        params, _keep = self._search_params(k, nprobe, ef_search)
        scores, ids = self._faiss.search(q, k, params=params)
        if self.metric == "l2":
            scores = -scores
        return scores, ids

    def tune(
        self,
        queries: np.ndarray | torch.Tensor,
        *,
        target_recall: float = 0.95,
        k: int = 10,
        max_query_ms: float | None = None,
    ) -> dict:
        """Set the default ``nprobe`` (IVF) or ``ef_search`` (HNSW) to the cheapest setting whose recall@k
        reaches ``target_recall`` on ``queries`` [Q, D] (e.g. a sample of the indexed embeddings), as
        autofaiss tunes its search parameters; with ``max_query_ms``, among the settings whose batched search
        takes at most that long per query (``layout.cheapest_setting``).

        Recall is measured against an exhaustive search of the same index: all lists for IVF (exact for
        IVF-Flat, the best the codes allow for IVF-PQ), a brute-force scan of the stored vectors for HNSW.
        Other layouts have nothing to tune.

        Returns:
            ``{"param", "value", "recall", "ms_per_query", "met"}`` of the chosen setting, or ``{}``.
        """
        if self._faiss is None or self._faiss.ntotal == 0 or self._kind not in ("ivf", "hnsw"):
            return {}
        q = self._vectors(queries, "queries")
        if self._kind == "ivf":
            top = faiss.extract_index_ivf(self._faiss).nlist
            name, ladder, truth = "nprobe", nprobe_ladder(top), self.knn(q, k, nprobe=top)[1]
        else:
            name, ladder = "ef_search", EF_SEARCH_LADDER
            truth = exact_graph_ids(self._faiss, q, k, self._tombstones)
        chosen = cheapest_setting(
            lambda v: self.knn(q, k, **{name: v})[1], truth, ladder, target_recall, max_query_ms=max_query_ms
        )
        self.search_defaults[name] = chosen["value"]
        return {"param": name, **chosen}

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
        """Search by text, by audio (audio → audio similarity) or by embedding; one list of hits per query.

        Args:
            text: One caption or a list (embedded with the attached model).
            audio: One recording or a list: paths, bytes, arrays (embedded whole with the attached model).
            embedding: Query vectors [D] or [Q, D].
            k: Hits per query.
            sample_rate: Rate of bare audio arrays (``None`` = the model's rate).

        Returns:
            [Q][≤ k] hits, best first.
        """
        check_one_query(text, audio, embedding)
        queries = (
            embedding if embedding is not None else self.embed_queries(text=text, audio=audio, sample_rate=sample_rate)
        )
        scores, ids = self.knn(queries, k, nprobe=nprobe, ef_search=ef_search)
        return self._hits(scores, ids)

    def embed_queries(
        self,
        *,
        text: str | Sequence[str] | None = None,
        audio: AudioSource | Sequence[AudioSource] | None = None,
        sample_rate: int | None = None,
    ) -> torch.Tensor:
        """Text or audio queries embedded with the attached model → [Q, D] (what ``search`` looks up)."""
        if (text is None) == (audio is None):
            raise ValueError("give exactly one of text=, audio=")
        if text is not None:
            return self._require_model().embed_text([text] if isinstance(text, str) else list(text))
        single = isinstance(audio, (str, os.PathLike, bytes, np.ndarray, torch.Tensor, tuple)) or hasattr(audio, "read")
        sources = [audio] if single else list(audio)
        return self._require_model().embed_audio(sources, sample_rate=sample_rate)

    def _hits(self, scores: np.ndarray, ids: np.ndarray) -> list[list[Hit]]:
        found = self._db.fetch(ids.reshape(-1).tolist())
        out = []
        for row_scores, row_ids in zip(scores.tolist(), ids.tolist()):
            hits = []
            for score, i in zip(row_scores, row_ids):
                e = found.get(i)
                if e is not None:
                    hits.append(Hit(i, score, **asdict(e)))
            out.append(hits)
        return out

    def _require_model(self) -> ClapModel:
        if self.model is None:
            raise ValueError(
                "text and audio queries need the index's model: AudioIndex.load(dir, model=...), "
                "index.attach(model) or index.load_model(); or search by embedding="
            )
        return self.model

    # ------------------------------------------------------------------ persistence
    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary: size, layout, metric, model and search defaults."""
        return {
            "count": len(self),
            "dim": self.dim,
            "metric": self.metric,
            "index": self.key,
            "kind": self._kind,
            "plan": asdict(self.plan) if self.plan else None,
            "model": asdict(self.model_info) if self.model_info else None,
            "window": self.window,
            "search_defaults": dict(self.search_defaults),
            "tombstones": len(self._tombstones),
        }

    def save(self, directory: str | os.PathLike, *, with_model: bool = False) -> Path:
        """Write ``manifest.json``, ``index.faiss`` and ``metadata.sqlite`` under a temporary name, then
        rename the folder into place (``clapkit.io.atomic_replace_dir``: an interrupted save leaves the previous
        index intact).

        Args:
            with_model: Also save the attached model in the folder (``model/``, a ``save_pretrained`` folder),
                which ``load_model`` then prefers: for a model that cannot be loaded again by name.
        """
        model = self._require_model() if with_model else None
        with self._lock:
            manifest = {
                **self.describe(),
                "index_spec": self.index_spec,
                "next_id": self._next_id,
                "memory_budget": self.memory_budget,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            return write_folder(directory, self._faiss, self._db, manifest, model)

    @staticmethod
    def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
        """The manifest of a saved index, without loading it (``clapkit.index.store.read_manifest``)."""
        return read_manifest(directory)

    @classmethod
    def load(
        cls, directory: str | os.PathLike, *, model: ClapModel | None = None, read_only: bool = False
    ) -> AudioIndex:
        """Load a saved index.

        Args:
            model: Attach this model (refused unless it is the model the index was built with).
            read_only: Open the SQLite file in place instead of copying it into memory (for serving);
                ``add_*`` and ``remove`` are refused.

        Raises:
            ValueError: a missing or corrupt folder, or a different model.
        """
        directory = Path(directory)
        m = read_manifest(directory)
        info = ModelInfo(**m["model"]) if m.get("model") else None
        index = cls(
            int(m["dim"]),
            index=m.get("index_spec", "auto"),
            metric=m["metric"],
            model_info=info,
            memory_budget=int(m.get("memory_budget", parse_bytes("8GiB"))),
            nprobe=m["search_defaults"].get("nprobe"),
            ef_search=m["search_defaults"].get("ef_search") or 64,
        )
        index.window = m.get("window")
        index._next_id = int(m.get("next_id", 0))
        index.model_dir = directory / m["files"]["model"] if m["files"].get("model") else None
        index._db = read_sidecar(directory, read_only)
        if m["files"].get("faiss"):
            index._faiss = read_faiss(directory, m, index.dim)
            index._kind = kind_of(index._faiss)
            index.plan = IndexPlan(**m["plan"]) if m.get("plan") else IndexPlan(index._kind, m["index"], 0)
        index._set_tombstones(index._db.tombstones())
        index.read_only = read_only
        rows = index._db.count()
        stored = index._faiss.ntotal if index._faiss is not None else 0
        if rows != stored - len(index._tombstones):
            raise ValueError(
                f"{directory}: {FAISS_FILE} holds {stored} vectors ({len(index._tombstones)} removed) but "
                f"{METADATA_FILE} has {rows} rows; the folder is corrupt, rebuild the index"
            )
        if model is not None:
            index.attach(model)
        return index
