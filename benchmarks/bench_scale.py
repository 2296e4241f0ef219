"""Scale-out paths against the one-process ones, on the same machine in the same run.

1. **Embedding engines**: ``retrieval embed`` over the same files with ``--engine local`` (1 decoding worker
   process + inference in the main process with ``--threads`` torch threads) and ``--engine ray`` (a local
   Ray cluster; 1 decode task + 1 inference actor with ``--threads`` threads). Clips per second, and the ray
   engine's overhead = 1 - ray / local. Target: overhead ≤ 15 % on 2 cores.
2. **Index build by parts**: ``--n`` clustered 512-d vectors (``bench_index.mixture``) in 10 parts on disk;
   ``clapkit.index.sharded.add_parts`` with 1 process vs ``--workers`` processes (the same trained layout):
   wall time, peak memory of the processes, recall@10 against exact search, and whether the two indexes return
   the same ids.

Run: ``python -m benchmarks.bench_scale [--clips 300] [--n 1000000] [--workers 2] [--threads 2]``; prints
markdown tables.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import faiss
import numpy as np
import soundfile as sf
import torch

from benchmarks.bench_index import mixture, recall_at
from benchmarks.common import machine
from clapkit.index import AudioIndex
from clapkit.index.sharded import PartFiles, add_parts


def _clips(folder: Path, count: int, rate: int, seconds: float) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    for i in range(count):
        wave = 0.3 * np.sin(2 * np.pi * (200 + 5 * i) * t) + 0.05 * rng.standard_normal(len(t))
        sf.write(folder / f"clip{i:04d}.flac", wave.astype(np.float32), rate)


def bench_engines(args: argparse.Namespace, tmp: Path) -> None:
    import ray

    from clapkit.cli_helpers import load_model
    from retrieval.config import EmbedConfig
    from retrieval.embed import embed_collection

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the untrained heads: throughput only
        model = load_model(args.model)
    torch.set_num_threads(args.threads)
    audio = tmp / "audio"
    audio.mkdir()
    _clips(audio, args.clips, model.sample_rate, args.seconds)
    common = dict(inputs=[str(audio)], model=args.model, part_size=25, batch_size=16, workers=1)
    # The ray cluster counts the actor's threads and the decode task: the same threads as the local engine.
    ray.init(num_cpus=args.threads + 1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        rates = {}
        for round_ in range(args.rounds):
            for engine in ("local", "ray"):
                out = tmp / f"{engine}{round_}"
                cfg = EmbedConfig(out=str(out), engine=engine, ray_cpus_per_actor=args.threads, **common)
                start = time.perf_counter()
                summary = embed_collection(cfg, model=model)
                seconds = time.perf_counter() - start
                rates.setdefault(engine, []).append(summary["clips"] / seconds)
                shutil.rmtree(out)
        local, ray_ = (float(np.median(rates[e])) for e in ("local", "ray"))
    finally:
        ray.shutdown()
    print(f"\n### Embedding engines — {args.clips} clips of {args.seconds:g} s, {args.model}, {args.threads} threads")
    print(f"{machine()}; median of {args.rounds} interleaved rounds\n")
    print("| engine | clips/s |\n| --- | ---: |")
    print(f"| local (1 decode worker + main process) | {local:.2f} |")
    print(f"| ray (1 decode task + 1 actor) | {ray_:.2f} |")
    print(f"\nray / local = {ray_ / local:.3f} (overhead {100 * (1 - ray_ / local):.1f} %; target ≤ 15 %)")


def _build(paths: list[tuple[str, str]], sample: str, queries: str, index: str, n: int, workers: int, threads: int):
    """One build in a fresh process (so its peak memory is its own): train, add the parts, search the queries."""
    faiss.omp_set_num_threads(threads)
    built = AudioIndex(512, index=index, expected_size=n)
    built.prepare(n)
    start = time.perf_counter()
    built.train(np.load(sample))
    trained = time.perf_counter() - start
    add_parts(built, [PartFiles(Path(e), Path(m)) for e, m in paths], workers=workers, progress=False)
    seconds = time.perf_counter() - start
    ids = built.knn(np.load(queries), 10, nprobe=32 if built.kind == "ivf" else None)[1]
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return trained, seconds, ids, own, children, built.key


def bench_build(args: argparse.Namespace, tmp: Path) -> None:
    x = mixture(args.n, 512, clusters=1000, sigma=1.0, rank=32, seed=1)
    q = mixture(1000, 512, clusters=1000, sigma=1.0, rank=32, seed=2)
    faiss.omp_set_num_threads(args.threads)
    exact = faiss.IndexFlatIP(512)
    exact.add(x)
    truth = exact.search(q, 10)[1]
    del exact
    sizes = [len(a) for a in np.array_split(np.arange(args.n), 10)]
    paths, start = [], 0
    for i, size in enumerate(sizes):
        emb, meta = tmp / f"part{i}.npy", tmp / f"part{i}.jsonl"
        np.save(emb, x[start : start + size])
        meta.write_text("".join(json.dumps({"path": f"clip{j}.flac"}) + "\n" for j in range(start, start + size)))
        paths.append((str(emb), str(meta)))
        start += size
    np.save(tmp / "sample.npy", x[np.sort(np.random.default_rng(0).choice(args.n, 100_000, replace=False))])
    np.save(tmp / "queries.npy", q)
    del x
    results, ids = {}, {}
    context = multiprocessing.get_context("spawn")
    for workers in (1, args.workers):
        # A process pool's workers may start processes of their own (multiprocessing.Pool's daemons may not).
        with cf.ProcessPoolExecutor(1, mp_context=context) as pool:
            trained, seconds, found, own, children, key = pool.submit(
                _build,
                paths,
                str(tmp / "sample.npy"),
                str(tmp / "queries.npy"),
                args.index,
                args.n,
                workers,
                args.threads,
            ).result()
        results[workers] = (trained, seconds, recall_at(found, truth), own, children, key)
        ids[workers] = found
    same = bool(np.array_equal(ids[1], ids[args.workers]))
    print(f"\n### Index build by parts — {args.n:,} × 512 in 10 parts, {args.index}, {args.threads} threads")
    print(f"{machine()}; each build in a fresh process; recall@10 at nprobe 32 against exact search, 1000 queries\n")
    print("| processes | layout | train s | train + add + metadata s | recall@10 | peak RSS build / add workers MB |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for workers, (trained, seconds, recall, own, children, key) in results.items():
        kids = f"{children:.0f}" if workers > 1 else "-"
        print(f"| {workers} | {key} | {trained:.1f} | {seconds:.1f} | {recall:.3f} | {own:.0f} / {kids} |")
    print(f"\nsame ids from both builds: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=300, help="files embedded by each engine")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each file in s")
    parser.add_argument("--model", default="clapkit-small", help="encoder (a registered name or a folder)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of both engines")
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors in the index build")
    parser.add_argument("--index", default="IVF1024,PQ64", help="layout of the index build")
    parser.add_argument("--workers", type=int, default=2, help="processes of the parallel build")
    parser.add_argument("--threads", type=int, default=2, help="torch / FAISS threads")
    parser.add_argument("--skip", choices=["engines", "build"], help="leave one part out")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        if args.skip != "engines":
            bench_engines(args, Path(tmp))
        if args.skip != "build":
            (Path(tmp) / "build").mkdir()
            bench_build(args, Path(tmp) / "build")


if __name__ == "__main__":
    main()
