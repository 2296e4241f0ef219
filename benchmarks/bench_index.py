"""AudioIndex layouts on 1M clustered 512-d vectors: build time, memory, QPS and recall@10 against exact search.

Data: a Gaussian mixture of ``--clusters`` components with unit-norm centres, L2-normalised. By default each
component spreads in its own random ``--rank``-dimensional subspace (norm ``--sigma``) plus weak isotropic
noise (norm σ/4): embeddings of a sound class vary along few directions (low intrinsic dimension).
``--rank 0`` gives isotropic components (norm σ in all 512 dimensions), the hardest case for graph
indexes: within a class every point is nearly equidistant from every other. With σ = 1 a vector's
cosine to its centre is ≈ 0.7. Queries are fresh draws from the same mixture (not in the index).

Each layout is built through ``AudioIndex.build`` by its registered name (build times include the SQLite
sidecar), then searched with one batch of ``--queries`` queries per setting (nprobe / efSearch sweep).
Exact search is the ``flat`` layout; the machine may be shared, so its QPS is measured again right before
each layout's sweep and the speed-up is against that neighbouring measurement.
Target: ≥ 20× the exact QPS at recall@10 ≥ 0.95.

Run: ``python -m benchmarks.bench_index [--n 1000000] [--threads 2] [--rank 32]``; prints markdown tables.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from benchmarks.common import machine
from clapkit.index import AudioIndex

SWEEPS = {  # query-time settings tried per layout
    "hnsw": [{"ef_search": ef} for ef in (16, 32, 64, 128, 256, 512)],
    "ivf-flat": [{"nprobe": p} for p in (1, 2, 4, 8, 16, 32, 64)],
    "ivf-pq": [{"nprobe": p} for p in (4, 16, 64)],
}


def mixture(n: int, dim: int, clusters: int, sigma: float, rank: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    """[n, dim] float32 unit vectors drawn from the mixture (centres and subspaces are fixed by seed 0)."""
    fixed = np.random.default_rng(0)
    centres = fixed.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # Rows of N(0, 1/dim) have norm ≈ 1, so z [rank] ~ N(0, σ²/rank) gives a spread of norm ≈ σ.
    bases = fixed.standard_normal((clusters, rank, dim), dtype=np.float32) / dim**0.5 if rank else None
    iso = sigma / 4 if rank else sigma
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        labels = rng.integers(0, clusters, m)
        x = centres[labels] + rng.standard_normal((m, dim), dtype=np.float32) * (iso / dim**0.5)
        if rank:
            z = rng.standard_normal((m, rank), dtype=np.float32) * (sigma / rank**0.5)
            for c in np.unique(labels):
                rows = np.flatnonzero(labels == c)
                x[rows] += z[rows] @ bases[c]
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def saved_bytes(index: AudioIndex) -> tuple[int, int]:
    """Sizes of the saved FAISS index and SQLite sidecar [bytes] (the FAISS file mirrors its memory)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-index-"))
    try:
        index.save(folder / "ix")
        return (folder / "ix" / "index.faiss").stat().st_size, (folder / "ix" / "metadata.sqlite").stat().st_size
    finally:
        shutil.rmtree(folder)


def recall_at(ids: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(ids, truth)]))


def timed_knn(index: AudioIndex, q: np.ndarray, k: int, repeats: int, **params) -> tuple[float, np.ndarray]:
    """Best of ``repeats`` runs of one batched search."""
    best, ids = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        _, ids = index.knn(q, k, **params)
        best = min(best, time.perf_counter() - start)
    return len(q) / best, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="indexed vectors")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=1000, help="mixture components")
    parser.add_argument("--sigma", type=float, default=1.0, help="spread of a component around its centre")
    parser.add_argument("--rank", type=int, default=32, help="dimensions a component spreads in; 0 = isotropic")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="FAISS (OpenMP) threads")
    parser.add_argument("--layouts", default="hnsw,ivf-flat,ivf-pq", help="approximate layouts to compare")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    k, t0 = 10, time.perf_counter()
    print(f"machine: {machine()}; faiss {faiss.__version__}, {args.threads} threads")
    x = mixture(args.n, args.dim, args.clusters, args.sigma, args.rank, seed=1)
    q = mixture(args.queries, args.dim, args.clusters, args.sigma, args.rank, seed=2)
    kind = f"rank-{args.rank} components" if args.rank else "isotropic components"
    print(f"data: {args.n} × {args.dim}, {args.clusters} {kind}, σ={args.sigma}: {time.perf_counter() - t0:.1f} s")

    rows, tuned = [], {}
    exact, build, memory = build_layout("flat", x)
    exact.knn(q[:10], k)  # warm up (first-touch page faults, BLAS / OpenMP start-up)
    exact_qps, truth = timed_knn(exact, q, k, 1)
    rows.append(("flat", exact.key, {}, build, memory, exact_qps, exact_qps, 1.0))
    for layout in args.layouts.split(","):
        gc.collect()
        index, build, memory = build_layout(layout, x)
        start = time.perf_counter()
        tuned[layout] = index.tune(x[np.sort(np.random.default_rng(3).choice(len(x), 256, replace=False))])
        print(f"  tuned to recall 0.95 on 256 indexed vectors: {tuned[layout]} ({time.perf_counter() - start:.0f} s)")
        # The machine may be shared: measure exact search next door (≥ 300 queries keep FAISS on its BLAS path).
        local_exact, _ = timed_knn(exact, q[:500], k, 1)
        for params in SWEEPS[layout]:
            index.knn(q[:10], k, **params)
            qps, ids = timed_knn(index, q, k, 2, **params)
            rows.append((layout, index.key, params, build, memory, qps, local_exact, recall_at(ids, truth, k)))
            print(f"  {layout:8s} {params} recall@10 {rows[-1][-1]:.3f} {qps:7.0f} QPS (exact {local_exact:.0f})")
        del index

    print(f"\ntotal {time.perf_counter() - t0:.0f} s\n")
    print("| layout | factory key | build s | index MiB | query setting | recall@10 | QPS | exact QPS | × exact |")
    print("|---|---|---|---|---|---|---|---|---|")
    for layout, key, params, build, memory, qps, ref, recall in rows:
        setting = ", ".join(f"{k_}={v}" for k_, v in params.items()) or "exact"
        print(
            f"| {layout} | `{key}` | {build:.0f} | {memory / 2**20:.0f} | {setting} | {recall:.3f} | {qps:.0f} "
            f"| {ref:.0f} | {qps / ref:.1f}× |"
        )
    print("\nfastest setting with recall@10 ≥ 0.95, per layout:")
    for layout in args.layouts.split(","):
        ok = [r for r in rows if r[0] == layout and r[-1] >= 0.95]
        if ok:
            best = max(ok, key=lambda r: r[5] / r[6])
            print(f"  {layout}: {best[2]} → {best[5]:.0f} QPS ({best[5] / best[6]:.1f}× exact), recall {best[7]:.3f}")
        else:
            print(f"  {layout}: no setting reaches 0.95")
        print(f"    tuned default: {tuned[layout]}")


def build_layout(layout: str, x: np.ndarray) -> tuple[AudioIndex, float, int]:
    start = time.perf_counter()
    index = AudioIndex.build(x, index=layout, memory_budget="64GiB", target_recall=None)
    build = time.perf_counter() - start
    memory, sidecar = saved_bytes(index)
    mib = f"{memory / 2**20:.0f} MiB (+ {sidecar / 2**20:.0f} MiB SQLite)"
    print(f"{layout}: {index.key} built in {build:.1f} s, {mib}", flush=True)
    return index, build, memory


if __name__ == "__main__":
    main()
