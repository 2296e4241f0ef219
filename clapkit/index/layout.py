"""The FAISS layout of an index: the registered layouts, the ``auto`` choice and per-layout search parameters."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from clapkit.registry import Registry
from clapkit.units import parse_bytes

__all__ = [
    "EF_SEARCH_LADDER",
    "INDEX_TYPES",
    "METRICS",
    "IndexPlan",
    "IndexPolicy",
    "cheapest_setting",
    "choose_index",
    "default_nprobe",
    "default_train_points",
    "exact_graph_ids",
    "kind_of",
    "min_train_points",
    "nlist_for",
    "nprobe_ladder",
    "pq_nbits",
    "search_params",
]


METRICS = {"cosine": faiss.METRIC_INNER_PRODUCT, "ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}

# Per-vector bookkeeping of IndexIDMap2 (int64 id array + hash-map entry for the reverse map) [bytes].
_IDMAP_BYTES = 48


@dataclass(frozen=True)
class IndexPolicy:
    """The thresholds behind ``index="auto"`` and the registered layouts."""

    flat_below: int = 20_000  # vectors; below this an exact scan takes ~1 ms a query and needs no build
    hnsw_m: int = 32  # links per graph node of the `hnsw` layout
    pq_max_m: int = 64  # PQ sub-quantizers ceiling (8 dims each at 512-d)
    ivf_hnsw_quantizer_from: int = 16_384  # lists; from here the coarse quantizer is itself an HNSW graph


@dataclass(frozen=True)
class IndexPlan:
    """A FAISS index layout with its memory estimate.

    Attributes:
        kind: ``flat`` | ``hnsw`` | ``ivf-flat`` | ``ivf-pq`` | ``custom``.
        key: ``faiss.index_factory`` string, e.g. ``"HNSW32,Flat"``.
        bytes: Estimated memory of the filled index [bytes].
        reason: Why it was chosen (for logs and manifests).
    """

    kind: str
    key: str
    bytes: int
    reason: str = ""


INDEX_TYPES: Registry = Registry("index type")


def nlist_for(n: int) -> int:
    """IVF list count: the power of two nearest 4·√n (FAISS guidelines), ≤ n/39 so training has 39 points a list."""
    target = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(max(n, 1)))))
    cap = 2 ** int(math.log2(max(1, n // 39)))
    return int(max(1, min(target, cap, 2**16)))


def pq_nbits(n: int) -> int:
    """Bits per PQ code: 8 (256 centroids) when there are ≥ 39·256 vectors to train them, fewer below."""
    return int(min(8, max(1, int(math.log2(max(2, n // 39))))))


def _quantizer(nlist: int, policy: IndexPolicy) -> str:
    return f"IVF{nlist}_HNSW32" if nlist >= policy.ivf_hnsw_quantizer_from else f"IVF{nlist}"


@INDEX_TYPES.register("flat")
def _flat(n: int, dim: int, policy: IndexPolicy, budget: int | None = None) -> IndexPlan:
    return IndexPlan("flat", "Flat", n * (4 * dim + _IDMAP_BYTES), "exact inner-product scan")


@INDEX_TYPES.register("hnsw")
def _hnsw(n: int, dim: int, policy: IndexPolicy, budget: int | None = None) -> IndexPlan:
    m = policy.hnsw_m  # level 0 keeps 2·M int32 links per vector
    return IndexPlan("hnsw", f"HNSW{m},Flat", n * (4 * dim + 8 * m + _IDMAP_BYTES), f"graph, {m} links per node")


@INDEX_TYPES.register("ivf-flat")
def _ivf_flat(n: int, dim: int, policy: IndexPolicy, budget: int | None = None) -> IndexPlan:
    nlist = nlist_for(n)
    size = n * (4 * dim + 8) + nlist * 4 * dim
    return IndexPlan("ivf-flat", f"{_quantizer(nlist, policy)},Flat", size, f"{nlist} inverted lists")


@INDEX_TYPES.register("ivf-pq")
def _ivf_pq(n: int, dim: int, policy: IndexPolicy, budget: int | None = None) -> IndexPlan:
    nlist, nbits = nlist_for(n), pq_nbits(n)
    divisors = [m for m in range(min(policy.pq_max_m, max(1, dim // 2)), 0, -1) if dim % m == 0]

    def size(m: int) -> int:
        return n * (math.ceil(m * nbits / 8) + 8) + nlist * 4 * dim + (2**nbits) * dim * 4

    m = next((m for m in divisors if budget is None or size(m) <= budget), divisors[-1])
    key = f"{_quantizer(nlist, policy)},PQ{m}x{nbits}"
    return IndexPlan("ivf-pq", key, size(m), f"{nlist} lists, {m}-byte codes")


def choose_index(
    n: int, dim: int, memory_budget: int | str = "8GiB", *, index: str = "auto", policy: IndexPolicy | None = None
) -> IndexPlan:
    """The FAISS layout for ``n`` vectors of width ``dim``.

    ``index="auto"`` is autofaiss-style (size, then memory): exact ``Flat`` below ``policy.flat_below``
    vectors; otherwise ``IVF{nlist},Flat`` (nlist ≈ 4·√n) if it fits the budget; otherwise
    ``IVF{nlist},PQ{m}`` with the largest code that fits. Unlike autofaiss it does not pick HNSW: on
    clustered embeddings IVF-Flat reached recall@10 ≥ 0.95 at a higher QPS, builds ~3× faster and removes
    vectors for real (``benchmarks/bench_index.py``, docs/benchmarks.md); ``index="hnsw"`` still builds one.
    A registered name (``INDEX_TYPES.names()``) gives that layout sized for ``n``; anything else must be a
    valid ``faiss.index_factory`` string.

    Raises:
        ValueError: nothing fits the budget, or an invalid factory string.
    """
    policy = policy or IndexPolicy()
    budget = parse_bytes(memory_budget, "memory budget")
    name = index.lower()
    if name != "auto":
        if name in INDEX_TYPES:
            return INDEX_TYPES.get(name)(n, dim, policy)
        try:
            faiss.index_factory(dim, index)
        except RuntimeError as err:
            raise ValueError(
                f"index {index!r}: neither a registered index type ({', '.join(['auto', *INDEX_TYPES.names()])}) "
                f"nor a valid faiss index_factory string ({str(err).splitlines()[-1]})"
            ) from None
        return IndexPlan("custom", index, 0, "factory string given by the caller")
    plans = [_flat(n, dim, policy)] if n < policy.flat_below else []
    plans += [_ivf_flat(n, dim, policy), _ivf_pq(n, dim, policy, budget)]
    for plan in plans:
        if plan.bytes <= budget:
            return IndexPlan(plan.kind, plan.key, plan.bytes, f"auto for {n} × {dim}: {plan.reason}")
    raise ValueError(
        f"{n} vectors × {dim} dims do not fit a {budget / 2**20:.0f} MiB memory budget even as "
        f"{plans[-1].key} (~{plans[-1].bytes / 2**20:.0f} MiB); raise memory_budget"
    )


def kind_of(index: faiss.Index) -> str:
    """``ivf`` | ``hnsw`` | ``flat`` | ``custom``: the family of a built index (IDMap2 wrapper looked through)."""
    if faiss.try_extract_index_ivf(index) is not None:
        return "ivf"
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    return "flat" if isinstance(inner, faiss.IndexFlat) else "custom"


def search_params(
    index: faiss.Index, k: int, nprobe: int | None, ef_search: int | None, exclude: tuple | None = None
) -> tuple[Any, list]:
    """FAISS search parameters for ``index``'s layout: ``nprobe`` for IVF, ``efSearch`` (≥ k) for HNSW.

    Args:
        index: The built index (IDMap2 and pre-transform wrappers are looked through).
        exclude: ``(IDSelectorBatch, IDSelectorNot)`` over ids to leave out of the results.

    Returns:
        The parameters, and the objects they point to: keep that list alive until the search returns.
    """
    keep: list = []  # FAISS parameter objects hold raw pointers: keep the Python objects alive
    ef = max(ef_search or 0, k)
    inner = index.index if isinstance(index, faiss.IndexIDMap2) else index
    inner = faiss.downcast_index(inner)
    pre = isinstance(inner, faiss.IndexPreTransform)
    if pre:
        inner = faiss.downcast_index(inner.index)
    if isinstance(inner, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(nprobe=int(nprobe or 1))
        if isinstance(faiss.downcast_index(inner.quantizer), faiss.IndexHNSW):
            qp = faiss.SearchParametersHNSW(efSearch=max(64, 2 * int(nprobe or 1)))
            keep.append(qp)
            params.quantizer_params = qp
    elif isinstance(inner, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(efSearch=int(ef))
    else:
        params = faiss.SearchParameters()
    if exclude is not None:
        keep.append(exclude)
        params.sel = exclude[1]
    if pre:
        keep.append(params)
        params = faiss.SearchParametersPreTransform(index_params=params)
    keep.append(params)
    return params, keep


def default_nprobe(index: faiss.Index) -> int:
    """IVF lists visited per query unless told otherwise."""
    nlist = faiss.extract_index_ivf(index).nlist
    # A 1/64 slice of the lists, at least 8: recall@10 ≥ 0.95 on clustered embeddings (benchmarks/).
    return int(min(nlist, max(8, nlist // 64)))


def min_train_points(index: faiss.Index) -> int:
    """The fewest vectors an IVF layout can be trained on: one per list, and 2^nbits for PQ codebooks."""
    ivf = faiss.extract_index_ivf(index)
    pq = getattr(faiss.downcast_index(ivf), "pq", None)
    return max(ivf.nlist, 2**pq.nbits if pq is not None else 1)


def default_train_points(index: faiss.Index) -> int:
    """Training sample size of an IVF layout: 40 points per list, at least 10k for PQ codebooks."""
    ivf = faiss.extract_index_ivf(index)
    pq = getattr(faiss.downcast_index(ivf), "pq", None)
    return max(40 * ivf.nlist, 10_000 if pq is not None else 0)


def exact_graph_ids(index: faiss.IndexIDMap2, q: np.ndarray, k: int, tombstones: np.ndarray) -> np.ndarray:
    """Exact top-k ids of an IDMap2-wrapped graph, by a brute-force scan of its stored vectors [Q, k]."""
    storage = faiss.downcast_index(faiss.downcast_index(index.index).storage)
    _, internal = storage.search(q, k + len(tombstones))
    ids = faiss.vector_to_array(index.id_map)[internal]
    ids[internal < 0] = -1
    keep = ~np.isin(ids, tombstones)
    return np.array([row[mask][:k] for row, mask in zip(ids, keep)])


#: HNSW search breadths tried by ``AudioIndex.tune``, cheapest first.
EF_SEARCH_LADDER = (16, 32, 64, 128, 256, 512, 1024)


def nprobe_ladder(nlist: int) -> list[int]:
    """IVF ``nprobe`` values tried by ``AudioIndex.tune``: powers of two up to ``nlist``, and ``nlist`` itself."""
    return [2**i for i in range(int(math.log2(nlist)) + 1)] + ([nlist] if nlist & (nlist - 1) else [])


def cheapest_setting(
    search: Callable[[int], np.ndarray],
    truth: np.ndarray,
    ladder: Sequence[int],
    target_recall: float,
    max_query_ms: float | None = None,
) -> dict[str, Any]:
    """The first (cheapest) value of ``ladder`` whose ids [Q, k] from ``search(value)`` reach ``target_recall``
    against ``truth`` [Q, k] (recall@k; -1 ids never count).

    With ``max_query_ms`` (autofaiss's query-time bound) the settings are also timed (wall time of the batched
    search / Q) and only those within the bound count; when none reaches the target within it, the most
    accurate one that fits is chosen (the cheapest value when none fits).

    Returns:
        ``{"value", "recall", "ms_per_query", "met"}``: ``met`` says whether both bounds hold.
    """
    k, q = truth.shape[1], max(1, len(truth))
    best: dict[str, Any] | None = None
    for value in ladder:
        start = time.perf_counter()
        ids = search(value)
        ms = 1000 * (time.perf_counter() - start) / q
        recall = float(np.mean([len(set(a) & set(b) - {-1}) / k for a, b in zip(ids, truth)]))
        fits = max_query_ms is None or ms <= max_query_ms
        here = {"value": value, "recall": recall, "ms_per_query": round(ms, 4), "met": fits and recall >= target_recall}
        if here["met"]:
            return here
        if best is None or (fits and (not best["fits"] or recall > best["recall"])):
            best = {**here, "fits": fits}
        if max_query_ms is not None and not fits:
            break  # a larger value only costs more
        if max_query_ms is None:
            best = {**here, "fits": True}  # the last value tried, as without a bound
    best.pop("fits")
    return best
