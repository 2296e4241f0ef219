"""Run configurations of the retrieval app, one dataclass per command.

``python -m retrieval`` builds its command-line and YAML schema from these dataclasses with jsonargparse
(``retrieval.__main__``): every field is a YAML key of ``configs/retrieval/<command>.yaml`` and a
``--field`` flag, and the attribute descriptions below are the ``--help`` text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["BuildConfig", "EmbedConfig", "ServeConfig"]


@dataclass
class EmbedConfig:
    """``python -m retrieval embed``: a collection → embedding parts (.npy + .jsonl) in ``out``.

    Attributes:
        inputs: Audio files, folders (searched recursively) or WebDataset .tar shards.
        out: Parts folder; rerunning with the same inputs resumes.
        model: save_pretrained folder (or registered name) of the encoder.
        device: Torch device (null = cpu).
        precision: Autocast dtype, bf16 or fp16 (null = fp32).
        window_seconds: Window length in s (null = the model's clip length).
        hop_seconds: Hop between windows in s (null = the model's hop).
        batch_size: Windows per forward pass.
        workers: Decoding processes (torch DataLoader workers); 0 = decode in the main process.
        part_size: Audio files per part (the unit of resumption); every shard is one part.
        max_parts: Stop after finishing this many parts (null = all).
        engine: ``local`` (this process and its decoding workers) or ``ray`` (Ray Data over a cluster: decode
            tasks and inference actors; needs the ``scale`` extra). Both write the same parts.
        address: Ray cluster to join (``auto``: the one running on this machine, or ``ray://host:10001``);
            null starts a local one for the run (dashboard off).
        ray_cpus: CPUs of the local cluster started when no address is given (null = all of this machine).
        ray_actors: Inference actors (null = one per GPU of the cluster with a cuda device, else one).
        ray_cpus_per_actor: CPUs reserved by each inference actor (its torch threads).
    """

    inputs: list[str] = field(default_factory=list)
    out: str = ""
    model: str = ""
    device: str | None = None
    precision: Literal["bf16", "fp16"] | None = None
    window_seconds: float | None = None  # s
    hop_seconds: float | None = None  # s
    batch_size: int = 32
    workers: int = 2
    part_size: int = 1024
    max_parts: int | None = None
    engine: Literal["local", "ray"] = "local"
    address: str | None = None
    ray_cpus: int | None = None
    ray_actors: int | None = None
    ray_cpus_per_actor: float = 1.0


@dataclass
class BuildConfig:
    """``python -m retrieval build``: embedding parts → an index folder.

    Attributes:
        parts: Folder written by ``retrieval embed``.
        out: Index folder (replaced atomically).
        index: auto | flat | hnsw | ivf-flat | ivf-pq | a faiss index_factory string.
        memory_budget: For auto: memory the index may use (e.g. 8GiB; also ``--max_memory``).
        train_size: IVF training sample size (null = 40 vectors per list, at least 10k with PQ).
        nprobe: Default IVF lists visited per query (null = tuned to target_recall).
        ef_search: Default HNSW search breadth (null = tuned to target_recall).
        target_recall: Recall@10 the tuned defaults reach on 256 sampled windows (null = no tuning).
        max_query_ms: Tune within this query time (ms per query, batched; null = no bound): autofaiss's
            query-time bound next to ``target_recall``.
        allow_partial: Build from the finished parts even if some are missing.
        workers: Processes that add the parts (their partial indexes merged in part order; HNSW: 1).
        seed: Training-sample seed.
    """

    parts: str = ""
    out: str = ""
    index: str = "auto"
    memory_budget: str = "8GiB"
    train_size: int | None = None
    nprobe: int | None = None
    ef_search: int | None = None
    target_recall: float | None = 0.95
    max_query_ms: float | None = None
    allow_partial: bool = False
    workers: int = 1
    seed: int = 0


@dataclass
class ServeConfig:
    """``python -m retrieval serve``: the HTTP service and its web page.

    Attributes:
        indices: Index folders, or NAME=FOLDER; the first is the default.
        host: Bind address.
        port: TCP port.
        device: Torch device of the query encoders (null = cpu).
        max_k: Hits per query at most.
        max_request_bytes: Request body limit in bytes; larger bodies get 413.
        max_query_seconds: Longest uploaded query clip in s; longer ones get 422.
        max_text_chars: Characters of a text query at most.
        search_threads: FAISS searches / clip decodes running at once; the rest queue.
        max_batch: Queries encoded in one forward pass at most when requests pile up.
        log_level: Uvicorn log level.
    """

    indices: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8000
    device: str | None = None
    max_k: int = 100
    max_request_bytes: int = 16 * 2**20  # 16 MiB
    max_query_seconds: float = 60.0  # s
    max_text_chars: int = 1000
    search_threads: int = 4
    max_batch: int = 32
    log_level: str = "info"
