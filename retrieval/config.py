"""Run configurations of the retrieval app: YAML files under ``configs/retrieval/`` plus command-line overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ["BuildConfig", "EmbedConfig", "ServeConfig", "load_config"]

C = TypeVar("C")


@dataclass
class EmbedConfig:
    """``python -m retrieval embed``: a collection → embedding parts (.npy + .jsonl) in ``out``."""

    inputs: list[str] = field(default_factory=list)  # audio files, folders, .tar shards
    out: str = ""  # parts folder; rerunning with the same inputs resumes
    model: str = ""  # save_pretrained folder (or registered name)
    device: str | None = None  # torch device; None = cpu
    precision: str | None = None  # None (fp32) | "bf16" | "fp16" autocast
    window_seconds: float | None = None  # s; None = the model's clip length
    hop_seconds: float | None = None  # s; None = the model's hop
    batch_size: int = 32  # windows per forward pass
    workers: int = 2  # decoding processes (torch DataLoader workers); 0 = decode in the main process
    part_size: int = 1024  # audio files per part; every shard is one part
    max_parts: int | None = None  # stop after finishing this many parts (None = all)


@dataclass
class BuildConfig:
    """``python -m retrieval build``: embedding parts → an index folder."""

    parts: str = ""  # folder written by `retrieval embed`
    out: str = ""  # index folder (replaced atomically)
    index: str = "auto"  # auto | flat | hnsw | ivf-flat | ivf-pq | a faiss index_factory string
    memory_budget: str = "8GiB"  # for auto: memory the index may use
    train_size: int | None = None  # IVF training sample (None = 40 vectors per list, ≥ 10k with PQ)
    nprobe: int | None = None  # default IVF lists visited per query; None = tuned to target_recall
    ef_search: int | None = None  # default HNSW search breadth; None = tuned to target_recall
    target_recall: float | None = 0.95  # recall@10 the tuned defaults reach on 256 sampled windows
    allow_partial: bool = False  # build from the finished parts even if some are missing
    seed: int = 0  # training-sample seed


@dataclass
class ServeConfig:
    """``python -m retrieval serve``: the HTTP service and its web page."""

    indices: list[str] = field(default_factory=list)  # index folders, optionally "name=folder"
    host: str = "127.0.0.1"
    port: int = 8000
    device: str | None = None  # torch device of the query encoders
    max_k: int = 100  # hits per query at most
    max_request_bytes: int = 16 * 2**20  # bytes; larger bodies get 413
    max_query_seconds: float = 60.0  # s; longer uploaded query clips get 422
    max_text_chars: int = 1000  # characters of a text query
    search_threads: int = 4  # FAISS searches / clip decodes running at once; the rest queue
    max_batch: int = 32  # queries encoded in one forward pass when requests pile up
    log_level: str = "info"


def load_config(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """A ``cls`` from a YAML file (optional) with ``overrides`` (``None`` values ignored) on top.

    Raises:
        ValueError: unknown keys (the valid ones are listed) or a YAML file that is not a mapping.
    """
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a YAML mapping of {cls.__name__} fields")
        data.update(loaded)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path or 'config'}: unknown keys {unknown}; valid keys: {sorted(known)}")
    return cls(**data)
