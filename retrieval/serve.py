"""The search service: FastAPI + uvicorn, with a static web page.

Endpoints:

- ``POST /search``: JSON ``{"text" | "embedding", "k", "index", "nprobe", "ef_search"}`` or a multipart form
  with an audio ``file`` (plus the same fields) → hits with scores, time spans and audio URLs.
- ``GET /audio/{id}?index=NAME[&span=true]``: the indexed recording (or just the hit's window, as WAV).
  Only files recorded in an index can be served: the id is looked up, no path comes from the client.
- ``GET /indices``, ``GET /health``, ``GET /metrics`` (JSON counters and latency percentiles).
- ``GET /``: the web page (``retrieval/static/``; no external resources).
"""

from __future__ import annotations

import asyncio
import collections
import io
import json
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import numpy as np
import soundfile as sf
import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clapkit.audio import load_audio
from clapkit.index import AudioIndex
from clapkit.index.sharded import IndexShards, open_index
from clapkit.index.sources import read_member
from retrieval.config import ServeConfig

__all__ = ["create_app", "load_indices", "serve"]

STATIC_DIR = Path(__file__).parent / "static"
MEDIA_TYPES = {
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".aiff": "audio/aiff",
    ".aif": "audio/aiff",
    ".au": "audio/basic",
}


class SearchRequest(BaseModel):
    """A search by ``text`` or ``embedding`` (JSON), or by an uploaded clip (multipart ``file``)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    embedding: list[float] | None = None
    k: int = Field(10, ge=1)
    index: str | None = None
    nprobe: int | None = Field(None, ge=1)
    ef_search: int | None = Field(None, ge=1)


# --------------------------------------------------------------------------------------------- loading
def _parse_index_arg(spec: str) -> tuple[str, Path]:
    name, sep, folder = spec.partition("=")
    if not sep:
        folder, name = spec, Path(spec.rstrip("/")).name
    if not name:
        raise ValueError(f"index {spec!r}: empty name; use NAME=FOLDER or a folder")
    return name, Path(folder)


def load_indices(cfg: ServeConfig) -> dict[str, AudioIndex | IndexShards]:
    """Open every ``cfg.indices`` folder read-only and load each distinct model once. ``NAME=DIR1,DIR2,…``
    serves the folders as one index (the shards of one collection, ``IndexShards``: merged top-k).

    Raises:
        ValueError: no indices, a duplicate name, a folder that is not an index, or a model mismatch.
    """
    if not cfg.indices:
        raise ValueError("serve: give at least one index folder (--index DIR or `indices:` in the config)")
    from clapkit.factory import load

    out: dict[str, AudioIndex | IndexShards] = {}
    models: dict[tuple[str, str], Any] = {}
    for spec in cfg.indices:
        name, folder = _parse_index_arg(spec)
        if name in out:
            raise ValueError(f"index name {name!r} given twice; name them with NAME=FOLDER")
        index = open_index(folder, read_only=True)
        info = index.model_info
        if info is not None:
            key = (info.source, info.weights_sha256)
            if key not in models:
                models[key] = load(info.source, device=cfg.device).eval()
            index.attach(models[key])
        out[name] = index
    return out


# --------------------------------------------------------------------------------------------- middleware
class BodySizeLimit:
    """Rejects request bodies over ``max_bytes`` with 413, by Content-Length or while reading a chunked body."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_big = JSONResponse(
            {"detail": f"request body over the {self.max_bytes} byte limit; send a shorter clip"}, status_code=413
        )
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await too_big(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await too_big(scope, receive, send)
                return
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class Metrics:
    """Request counters and latency percentiles per route (last ``window`` requests)."""

    def __init__(self, window: int = 10_000) -> None:
        self.started = time.time()
        self.lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.latency: dict[str, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=window))
        self.in_flight = 0

    def snapshot(self, indices: dict[str, AudioIndex]) -> dict[str, Any]:
        with self.lock:
            latency = {}
            for route, samples in self.latency.items():
                ms = np.array(samples) * 1000
                latency[route] = {
                    "count": len(ms),
                    "mean": round(float(ms.mean()), 3),
                    "p50": round(float(np.percentile(ms, 50)), 3),
                    "p90": round(float(np.percentile(ms, 90)), 3),
                    "p99": round(float(np.percentile(ms, 99)), 3),
                }
            return {
                "uptime_s": round(time.time() - self.started, 1),
                "in_flight": self.in_flight,
                "requests": dict(self.counts),
                "latency_ms": latency,
                "indices": {name: len(index) for name, index in indices.items()},
            }


class RequestMetrics:
    """ASGI middleware feeding ``Metrics`` (route template, method, status, wall time)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self.metrics.lock:
            self.metrics.in_flight += 1
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or ("/static" if scope["path"].startswith("/static/") else "unmatched")
            with self.metrics.lock:
                self.metrics.in_flight -= 1
                self.metrics.counts[f"{scope['method']} {path} {status}"] += 1
                self.metrics.latency[f"{scope['method']} {path}"].append(time.perf_counter() - start)


# --------------------------------------------------------------------------------------------- the app
class _Batcher:
    """Opportunistic batching of query encodings: queries that arrive while the model is busy are encoded
    together in the next forward pass (one pass at a time per model and modality, off the event loop).

    Args:
        encode: Inputs → embeddings [N, D] (``model.embed_text`` or ``model.embed_audio``).
        max_batch: Queries per forward pass at most.
    """

    def __init__(self, encode: Callable[[list], np.ndarray], max_batch: int) -> None:
        self.encode, self.max_batch = encode, max_batch
        self.pending: list[tuple[Any, asyncio.Future]] = []
        self.task: asyncio.Task | None = None

    async def __call__(self, item: Any) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        if self.task is None:
            self.task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
                try:
                    out = await anyio.to_thread.run_sync(self.encode, [item for item, _ in batch])
                except Exception as err:  # every waiting request gets the error
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(err)
                    continue
                for (_, future), row in zip(batch, out):
                    if not future.done():
                        future.set_result(row)
        finally:
            self.task = None


class _Searcher:
    """Encodes queries through per-model batchers and runs FAISS + SQLite lookups in worker threads."""

    def __init__(self, indices: dict[str, AudioIndex], cfg: ServeConfig) -> None:
        self.indices, self.cfg = indices, cfg
        self.limiter = anyio.CapacityLimiter(cfg.search_threads)
        self.batchers: dict[tuple[int, str], _Batcher] = {}

    def index(self, name: str | None) -> tuple[str, AudioIndex]:
        if name is None:
            name = next(iter(self.indices))
        if name not in self.indices:
            raise HTTPException(404, f"unknown index {name!r}; available: {', '.join(self.indices)}")
        return name, self.indices[name]

    def _batcher(self, model: Any, kind: str) -> _Batcher:
        key = (id(model), kind)
        if key not in self.batchers:
            encode = model.embed_text if kind == "text" else model.embed_audio
            self.batchers[key] = _Batcher(encode, self.cfg.max_batch)
        return self.batchers[key]

    def _decode(self, model: Any, clip: bytes) -> torch.Tensor:
        wave = load_audio(clip, model.sample_rate, name="file")
        seconds, limit = len(wave) / model.sample_rate, self.cfg.max_query_seconds
        if seconds > limit:
            raise ValueError(f"file: {seconds:.1f} s of audio; query clips may be at most {limit} s")
        return wave

    async def encode(self, index: AudioIndex, req: SearchRequest, clip: bytes | None) -> np.ndarray:
        if req.embedding is not None:
            return np.asarray(req.embedding, dtype=np.float32)
        model = index.model
        if model is None:
            raise ValueError("this index records no model, so only embedding queries work")
        if req.text is not None:
            return await self._batcher(model, "text")(req.text)
        wave = await anyio.to_thread.run_sync(self._decode, model, clip, limiter=self.limiter)
        return await self._batcher(model, "audio")(wave)

    async def run(self, name: str, index: AudioIndex, req: SearchRequest, clip: bytes | None) -> dict[str, Any]:
        start = time.perf_counter()
        query = await self.encode(index, req, clip)
        search = partial(index.search, embedding=query, k=req.k, nprobe=req.nprobe, ef_search=req.ef_search)
        hits = (await anyio.to_thread.run_sync(search, limiter=self.limiter))[0]
        results = []
        for h in hits:
            d = h.to_dict()
            d["name"] = Path(h.member or h.path).name
            where = f"index={quote(name)}"
            if "shard" in h.fields:
                where += f"&shard={quote(h.fields['shard'])}"
            d["audio_url"] = f"/audio/{h.id}?{where}"
            d["span_url"] = f"/audio/{h.id}?{where}&span=true"
            results.append(d)
        kind = "text" if req.text is not None else "embedding" if req.embedding is not None else "audio"
        took = round((time.perf_counter() - start) * 1000, 2)
        return {"index": name, "query": kind, "k": req.k, "took_ms": took, "results": results}


async def _parse_search(request: Request, cfg: ServeConfig) -> tuple[SearchRequest, bytes | None]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    clip = None
    try:
        if ctype == "application/json":
            try:
                data = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise HTTPException(400, f"body is not valid JSON ({err})") from None
            if not isinstance(data, dict):
                raise HTTPException(422, "body must be a JSON object with text or embedding")
            req = SearchRequest.model_validate(data)
        elif ctype == "multipart/form-data":
            form = await request.form(max_files=1, max_fields=16)
            upload = form.get("file")
            fields = {k: v for k, v in form.items() if k != "file" and isinstance(v, str) and v != ""}
            if upload is not None and not isinstance(upload, str):
                clip = await upload.read()
                if not clip:
                    raise HTTPException(422, "file: the uploaded clip is empty")
            req = SearchRequest.model_validate(fields)
        else:
            raise HTTPException(415, "send application/json (text or embedding) or multipart/form-data (file)")
    except ValidationError as err:
        raise HTTPException(422, jsonable_encoder(err.errors(include_url=False, include_context=False))) from None
    given = [n for n, v in (("text", req.text), ("embedding", req.embedding), ("file", clip)) if v is not None]
    if len(given) != 1:
        raise HTTPException(422, f"give exactly one of text, embedding or file (got {', '.join(given) or 'none'})")
    if req.k > cfg.max_k:
        raise HTTPException(422, f"k={req.k} is over the limit of {cfg.max_k}")
    if req.text is not None:
        req.text = req.text.strip()
        if not req.text:
            raise HTTPException(422, "text: the query is empty")
        if len(req.text) > cfg.max_text_chars:
            raise HTTPException(422, f"text: {len(req.text)} characters; at most {cfg.max_text_chars}")
    return req, clip


def _span_wav(source: str | io.BytesIO, start: float, end: float | None) -> bytes:
    info = sf.info(source)
    if isinstance(source, io.BytesIO):
        source.seek(0)
    rate = info.samplerate
    stop = min(info.frames, round(end * rate)) if end is not None else None
    data, _ = sf.read(source, start=round(start * rate), stop=stop, dtype="float32", always_2d=True)
    out = io.BytesIO()
    sf.write(out, data, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def create_app(indices: dict[str, AudioIndex | IndexShards], cfg: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app over already loaded indices (name → index or ``IndexShards``, models attached)."""
    cfg = cfg or ServeConfig()
    if not indices:
        raise ValueError("create_app: no indices")
    searcher = _Searcher(indices, cfg)
    metrics = Metrics()
    app = FastAPI(title="clapkit audio search", version="1")
    app.add_middleware(BodySizeLimit, max_bytes=cfg.max_request_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.state.indices, app.state.metrics = indices, metrics

    @app.post("/search")
    async def search(request: Request) -> dict[str, Any]:
        """Search one index by text, embedding or an uploaded clip."""
        req, clip = await _parse_search(request, cfg)
        name, index = searcher.index(req.index)
        try:
            return await searcher.run(name, index, req, clip)
        except ValueError as err:
            raise HTTPException(422, str(err)) from None

    @app.get("/audio/{item_id}")
    def audio(item_id: int, index: str | None = None, span: bool = Query(False), shard: str | None = None) -> Response:
        """Stream the recording of an indexed window (``span=true``: only the window, as WAV); ids of a sharded
        index are per shard (``shard``, as in the hit's ``audio_url``)."""
        _, idx = searcher.index(index)
        if isinstance(idx, IndexShards):
            try:
                entry = idx.get([item_id], shard)[0]
            except ValueError as err:
                raise HTTPException(404, str(err)) from None
        else:
            entry = idx.get([item_id])[0]
        if entry is None:
            raise HTTPException(404, f"no item {item_id} in this index")
        try:
            if entry.member:
                data = read_member(entry.path, entry.member)
                if span:
                    return Response(_span_wav(io.BytesIO(data), entry.start, entry.end), media_type="audio/wav")
                return Response(data, media_type=MEDIA_TYPES.get(Path(entry.member).suffix.lower(), "audio/*"))
            path = Path(entry.path)
            if not path.is_file():
                raise HTTPException(404, f"item {item_id}: its audio file is no longer on disk")
            if span:
                return Response(_span_wav(str(path), entry.start, entry.end), media_type="audio/wav")
            return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix.lower(), "audio/*"))
        except (ValueError, sf.LibsndfileError) as err:
            raise HTTPException(404, f"item {item_id}: audio unavailable ({err})") from None

    @app.get("/indices")
    def list_indices() -> list[dict[str, Any]]:
        """The served indices: size, layout and model."""
        out = []
        for name, idx in indices.items():
            d = idx.describe()
            d["name"] = name
            d["model"] = d["model"]["name"] if d["model"] else None
            out.append(d)
        return out

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "indices": {name: len(idx) for name, idx in indices.items()}}

    @app.get("/metrics")
    def get_metrics() -> dict[str, Any]:
        return metrics.snapshot(indices)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def serve(cfg: ServeConfig) -> None:
    """Load the indices and run uvicorn until interrupted."""
    import uvicorn

    app = create_app(load_indices(cfg), cfg)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level)
