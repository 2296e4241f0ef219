"""The ``ray`` engine of ``retrieval embed``: the same parts, spread over a Ray cluster with Ray Data.

The pipeline::

    from_items(parts)                   one row per part still to do
      → flat_map(decode)                CPU tasks: decode + resample each clip, cut it into windows
      → map_batches(Embedder, ActorPoolStrategy)
                                        actors that hold the model (``num_gpus`` each on GPU nodes)
      → driver                          collects each part's windows and writes it as the local engine does

Ray Data streams the stages, so decode tasks run while the actors embed. A part is written (``.npy``,
``.jsonl``, then its ``.done.json``) by the driver once all its windows are back, so a killed run resumes
exactly as a local one: finished parts are skipped. Windows carry their position in the part, and the
driver restores the local engine's order whatever order Ray returns them in.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clapkit.progress import progress_bar

__all__ = ["connect", "run_ray"]

_EMPTY = np.zeros(0, np.float32)


def connect(address: str | None, num_cpus: int | None = None) -> bool:
    """Join the cluster at ``address`` (``auto``: the one running on this machine), or start a local one
    (dashboard off) when there is none; a driver already connected keeps its connection.

    Returns:
        Whether this call connected (the caller then disconnects with ``ray.shutdown``).
    """
    import ray

    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **options)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **options)
    return True


def _decode(row: dict[str, Any], rate: int, window: int, hop: int) -> Iterator[dict[str, Any]]:
    """One part → its windows (``seq`` = position in the part) and a last row with the part's counts."""
    from retrieval.embed import Part, _PartStream

    part = Part(row["name"], files=list(row["files"]) or None, shard=row["shard"] or None)
    seq = 0
    for item in _PartStream([part], rate, window, hop):
        if item.get("done"):
            stats = {k: item[k] for k in ("clips", "skipped", "errors")}
            stats["windows"] = seq
            yield {"part": part.name, "seq": -1, "meta": json.dumps(stats), "wave": _EMPTY}
            continue
        wave, entry = item["wave"].numpy(), item["entry"]
        for s, e in item["spans"]:
            meta = {**entry, "start": s / rate, "end": e / rate, "duration": len(wave) / rate}
            yield {"part": part.name, "seq": seq, "meta": json.dumps(meta), "wave": wave[s:e]}
            seq += 1


class Embedder:
    """A Ray Data actor: the model, loaded once, embeds batches of windows (count rows pass through)."""

    def __init__(self, model_ref: list, device: str | None, precision: str | None, threads: int) -> None:
        import ray

        from retrieval.embed import _DTYPES

        torch.set_num_threads(max(1, threads))
        self.model = ray.get(model_ref[0])
        if device:
            self.model.to(device)
        self.model.eval()
        self.dtype = _DTYPES[precision]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [i for i, s in enumerate(batch["seq"]) if s >= 0]
        emb = np.zeros((len(batch["seq"]), self.model.embed_dim), np.float32)
        if rows:
            waves = [torch.from_numpy(np.asarray(batch["wave"][i], np.float32)) for i in rows]
            out = self.model.embed_audio(waves, batch_size=len(waves), autocast_dtype=self.dtype)
            emb[rows] = np.asarray(out, dtype=np.float32)
        return {"part": batch["part"], "seq": batch["seq"], "meta": batch["meta"], "embedding": emb}


def run_ray(cfg, model, todo: list, out: Path, summary: dict[str, Any], window: float, hop: float) -> None:
    """Embed the parts ``todo`` on Ray and write each as it completes (counts added to ``summary``)."""
    import ray
    import ray.data

    from retrieval.embed import _Buffer, _write_part

    started = connect(cfg.address, cfg.ray_cpus)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the driver's own bar counts clips and parts
        gpus = 1.0 if cfg.device and str(cfg.device).startswith("cuda") else 0.0
        actors = cfg.ray_actors or max(1, int(ray.cluster_resources().get("GPU", 0)) if gpus else 1)
        rate = model.sample_rate
        # The model travels once through the object store (on CPU); each actor moves its copy to the device.
        model_ref = ray.put(model if model.device.type == "cpu" else copy.deepcopy(model).cpu())
        items = [{"name": p.name, "files": list(p.files or []), "shard": p.shard or ""} for p in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.flat_map(
            _decode,
            fn_kwargs={"rate": rate, "window": round(window * rate), "hop": max(1, round(hop * rate))},
            num_cpus=1,
        )
        ds = ds.map_batches(
            Embedder,
            fn_constructor_kwargs={
                "model_ref": [model_ref],
                "device": cfg.device,
                "precision": cfg.precision,
                "threads": int(cfg.ray_cpus_per_actor),
            },
            batch_size=cfg.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=cfg.ray_cpus_per_actor,
            num_gpus=gpus,
        )
        _collect(ds.iter_rows(), todo, out, model.embed_dim, summary, _Buffer, _write_part)
    finally:
        if started:
            ray.shutdown()


def _collect(rows, todo: list, out: Path, dim: int, summary: dict[str, Any], buffer_cls, write_part) -> None:
    """Gather windows per part; write a part once its count row and all its windows have arrived."""
    windows: dict[str, dict[int, tuple[dict[str, Any], np.ndarray]]] = {p.name: {} for p in todo}
    stats: dict[str, dict[str, Any]] = {}
    bar = progress_bar(total=len(todo), desc="embed (ray)", unit="part", dynamic_ncols=True)
    try:
        for row in rows:
            name, seq = row["part"], int(row["seq"])
            if seq < 0:
                stats[name] = json.loads(row["meta"])
            else:
                windows[name][seq] = (json.loads(row["meta"]), np.asarray(row["embedding"], np.float32))
                summary["windows"] += 1
            done = stats.get(name)
            if done is not None and len(windows[name]) == done["windows"]:
                buf = buffer_cls()
                for i in range(done["windows"]):
                    meta, emb = windows[name][i]
                    buf.rows.append(meta)
                    buf.emb.append(emb)
                write_part(out, name, buf, dim, done)
                del windows[name], stats[name]
                summary["done_now"] += 1
                summary["clips"] += done["clips"]
                summary["skipped"] += done["skipped"]
                bar.update(1)
                bar.set_postfix(windows=summary["windows"])
    finally:
        bar.close()
    if windows:
        raise RuntimeError(f"ray engine: {len(windows)} part(s) came back incomplete: {', '.join(sorted(windows))}")
