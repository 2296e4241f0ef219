"""Resumable batch embedding of a large collection (folders of audio files or WebDataset shards).

The collection is split into parts (``part_size`` files, or one shard each). With the ``local`` engine,
DataLoader worker processes decode and resample clips; the main process cuts them into windows and embeds
them in batches. The ``ray`` engine (``retrieval.ray_engine``) runs the same steps as Ray Data tasks and
actors over a cluster. Either way, each finished part is written as::

    part-00000.npy        [windows, D] float32 embeddings
    part-00000.jsonl      one metadata line per window (path, member, start, end, duration, captions, …)
    part-00000.done.json  counts; written last, so a part without it is redone after a kill

next to ``plan.json`` (model identity, window settings, the part list) and ``inputs.txt``. Rerunning the
same command skips finished parts; a different model, inputs or window settings are refused.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clapkit.audio import load_audio
from clapkit.cli_helpers import load_model
from clapkit.index import model_info
from clapkit.index.sources import Clip, expand_inputs, iter_shard, window_spans
from clapkit.io import atomic_save_npy, atomic_write_json, atomic_write_text
from clapkit.progress import progress_bar
from retrieval.config import EmbedConfig

__all__ = ["FinishedPart", "Part", "embed_collection", "finished_parts", "plan_parts", "read_plan"]

PLAN_FILE = "plan.json"
INPUTS_FILE = "inputs.txt"
PLAN_FORMAT = "clapkit-embedding-parts"
_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Part:
    """A unit of work: a run of audio files or one shard."""

    name: str
    files: list[str] | None = None
    shard: str | None = None

    def clips(self, on_error) -> Iterator[Clip]:
        if self.shard is not None:
            yield from iter_shard(self.shard, on_error)
        else:
            for f in self.files or []:
                yield Clip(path=f)


@dataclass
class FinishedPart:
    """A written part: its arrays and counts."""

    name: str
    embeddings: Path
    metadata: Path
    stats: dict[str, Any]


def plan_parts(files: list[str], shards: list[str], part_size: int) -> list[Part]:
    """Deterministic parts: ``part_size`` files each, then one per shard."""
    if part_size <= 0:
        raise ValueError(f"part_size must be positive, got {part_size}")
    chunks = [Part("", files=files[i : i + part_size]) for i in range(0, len(files), part_size)]
    parts = chunks + [Part("", shard=s) for s in shards]
    for i, part in enumerate(parts):
        part.name = f"part-{i:05d}"
    return parts


class _PartStream(IterableDataset):
    """Decoded clips of the given parts; worker ``w`` of ``n`` takes parts ``w, w + n, …``.

    Yields one dict per clip (``wave`` [T] at the model rate plus window spans) and one ``done`` record
    with the counts after the last clip of each part.
    """

    def __init__(self, parts: list[Part], sample_rate: int, window: int, hop: int) -> None:
        self.parts, self.sample_rate, self.window, self.hop = parts, sample_rate, window, hop

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for part in self.parts[worker::workers]:
            errors: list[str] = []

            def on_error(name: str, err: Exception, errors: list[str] = errors) -> None:
                errors.append(str(err) if str(err).startswith(name) else f"{name}: {err}")

            clips = 0
            for clip in part.clips(on_error):
                try:
                    source = clip.data if clip.data is not None else clip.path
                    wave = load_audio(source, self.sample_rate, name=clip.name)
                except ValueError as err:
                    on_error(clip.name, err)
                    continue
                clips += 1
                spans = window_spans(len(wave), self.window, self.hop)
                yield {"part": part.name, "entry": clip.entry(), "wave": wave, "spans": spans}
            yield {"part": part.name, "done": True, "clips": clips, "skipped": len(errors), "errors": errors[:20]}


def _fingerprint(cfg: EmbedConfig, info: dict[str, Any], window: float, hop: float, inputs: list[str]) -> dict:
    digest = hashlib.sha256("\n".join(inputs).encode()).hexdigest()
    return {"model": info, "window_seconds": window, "hop_seconds": hop, "part_size": cfg.part_size, "inputs": digest}


def read_plan(out: str | Path) -> dict[str, Any]:
    """The ``plan.json`` of a parts folder.

    Raises:
        ValueError: not a parts folder.
    """
    path = Path(out) / PLAN_FILE
    if not path.is_file():
        raise ValueError(f"{out}: no {PLAN_FILE}; expected a folder written by `python -m retrieval embed`")
    plan = json.loads(path.read_text())
    if plan.get("format") != PLAN_FORMAT:
        raise ValueError(f"{path}: not an embedding-parts plan (format {plan.get('format')!r})")
    return plan


def finished_parts(out: str | Path) -> tuple[dict[str, Any], list[FinishedPart]]:
    """The plan and the parts of ``out`` that are completely written, in part order."""
    out = Path(out)
    plan = read_plan(out)
    done = []
    for name in plan["parts"]:
        marker = out / f"{name}.done.json"
        if marker.is_file():
            done.append(FinishedPart(name, out / f"{name}.npy", out / f"{name}.jsonl", json.loads(marker.read_text())))
    return plan, done


class _Buffer:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.emb: list[np.ndarray | None] = []


def embed_collection(cfg: EmbedConfig, model=None) -> dict[str, Any]:
    """Embed ``cfg.inputs`` into parts under ``cfg.out`` (see the module docstring).

    Args:
        cfg: The run.
        model: An already loaded model (default: ``clapkit.load(cfg.model)``, with a warning for an untrained
            architecture name); its identity is recorded.

    Returns:
        Counts: parts total / done before / done now, clips, windows, skipped, seconds.

    Raises:
        ValueError: no inputs, or ``cfg.out`` holds parts of a different run.
    """
    if not cfg.out:
        raise ValueError("embed: set `out` (the parts folder)")
    files, shards = expand_inputs(cfg.inputs)
    if not files and not shards:
        raise ValueError(f"embed: no audio files or .tar shards in {cfg.inputs}")
    if cfg.engine not in ("local", "ray"):
        raise ValueError(f"engine {cfg.engine!r}: valid engines are local, ray")
    if cfg.precision not in _DTYPES:
        raise ValueError(f"precision {cfg.precision!r}: valid values are fp32 (null), bf16, fp16")
    if model is None:
        if not cfg.model:
            raise ValueError("embed: set `model` (a save_pretrained folder or a registered name)")
        model = load_model(cfg.model, device=cfg.device)  # warns for an untrained architecture name
    model.eval()
    audio = model.config.audio
    window = cfg.window_seconds or audio.clip_seconds
    hop = cfg.hop_seconds or audio.hop_seconds
    info = asdict(model_info(model, source=cfg.model or None))
    inputs = files + shards
    parts = plan_parts(files, shards, cfg.part_size)
    fingerprint = _fingerprint(cfg, info, window, hop, inputs)
    out = Path(cfg.out)
    if (out / PLAN_FILE).is_file():
        old = read_plan(out)
        if old["fingerprint"] != fingerprint:
            changed = sorted(k for k in fingerprint if old["fingerprint"].get(k) != fingerprint[k])
            raise ValueError(
                f"{out} holds parts of a different run (changed: {', '.join(changed)}); "
                "use a new `out` folder or delete this one"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / INPUTS_FILE, "\n".join(inputs) + "\n")
        atomic_write_json(
            out / PLAN_FILE,
            {
                "format": PLAN_FORMAT,
                "fingerprint": fingerprint,
                "model": info,
                "window_seconds": window,
                "hop_seconds": hop,
                "parts": [p.name for p in parts],
                "layout": [{"name": p.name, "shard": p.shard, "files": len(p.files or [])} for p in parts],
            },
        )
    todo = [p for p in parts if not (out / f"{p.name}.done.json").is_file()]
    summary = {"parts": len(parts), "done_before": len(parts) - len(todo), "done_now": 0}
    if cfg.max_parts is not None:
        todo = todo[: cfg.max_parts]
    summary.update(clips=0, windows=0, skipped=0)
    start = time.perf_counter()
    if todo and cfg.engine == "ray":
        from retrieval.ray_engine import run_ray

        run_ray(cfg, model, todo, out, summary, window, hop)
    elif todo:
        _run(cfg, model, todo, out, summary, window, hop)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary


def _run(cfg: EmbedConfig, model, todo: list[Part], out: Path, summary: dict, window: float, hop: float) -> None:
    rate = model.sample_rate
    stream = _PartStream(todo, rate, round(window * rate), max(1, round(hop * rate)))
    loader = DataLoader(
        stream,
        batch_size=None,
        num_workers=cfg.workers,
        prefetch_factor=4 if cfg.workers else None,
    )
    dtype = _DTYPES[cfg.precision]
    buffers: dict[str, _Buffer] = {}
    pending: list[tuple[_Buffer, int, torch.Tensor]] = []

    def flush(all_: bool = False) -> None:
        while len(pending) >= cfg.batch_size or (all_ and pending):
            batch = pending[: cfg.batch_size]
            del pending[: cfg.batch_size]
            emb = model.embed_audio([w for _, _, w in batch], batch_size=cfg.batch_size, autocast_dtype=dtype)
            for (buf, row, _), e in zip(batch, emb):
                buf.emb[row] = e

    total = sum(len(p.files or []) for p in todo) if not any(p.shard for p in todo) else None
    bar = progress_bar(total=total, desc="embed", unit="clip", dynamic_ncols=True)
    try:
        for item in loader:
            buf = buffers.setdefault(item["part"], _Buffer())
            if item.get("done"):
                flush(all_=True)
                _write_part(out, item["part"], buf, model.embed_dim, item)
                del buffers[item["part"]]
                summary["done_now"] += 1
                summary["skipped"] += item["skipped"]
                bar.set_postfix(parts=f"{summary['done_now']}/{len(todo)}", windows=summary["windows"])
                continue
            wave, entry = item["wave"], item["entry"]
            rate = model.sample_rate
            for s, e in item["spans"]:
                buf.rows.append({**entry, "start": s / rate, "end": e / rate, "duration": len(wave) / rate})
                buf.emb.append(None)
                pending.append((buf, len(buf.rows) - 1, wave[s:e]))
            summary["clips"] += 1
            summary["windows"] += len(item["spans"])
            bar.update(1)
            flush()
    finally:
        bar.close()


def _write_part(out: Path, name: str, buf: _Buffer, dim: int, done: dict[str, Any]) -> None:
    emb = np.stack(buf.emb).astype(np.float32) if buf.emb else np.zeros((0, dim), np.float32)
    atomic_write_text(out / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in buf.rows))
    atomic_save_npy(out / f"{name}.npy", emb)
    stats = {"clips": done["clips"], "windows": len(buf.rows), "skipped": done["skipped"], "errors": done["errors"]}
    atomic_write_json(out / f"{name}.done.json", stats)
