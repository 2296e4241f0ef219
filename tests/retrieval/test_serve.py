"""The HTTP service through FastAPI's TestClient: search, audio streaming, limits and errors."""

from __future__ import annotations

import asyncio
import io
import re

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from clapkit.index.sources import read_member
from retrieval.__main__ import parse
from retrieval.config import ServeConfig
from retrieval.serve import STATIC_DIR, _Batcher, create_app, load_indices
from tests.conftest import TINY_RATE, tone


@pytest.fixture(scope="module")
def client(served_index):
    cfg = ServeConfig(max_k=20, max_request_bytes=100_000, max_query_seconds=2.0)
    with TestClient(create_app({"demo": served_index, "other": served_index}, cfg)) as c:
        yield c


def wav_bytes(wave: np.ndarray, rate: int = TINY_RATE) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="WAV")
    return buf.getvalue()


def test_search_by_text(client, served_index):
    r = client.post("/search", json={"text": "a high tone", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["index"] == "demo" and body["query"] == "text" and len(body["results"]) == 5
    hit = body["results"][0]
    keys = {"id", "score", "path", "start", "end", "duration", "captions", "labels", "audio_url", "span_url"}
    assert keys <= set(hit)
    expected = served_index.search(text="a high tone", k=5)[0]
    assert [h["id"] for h in body["results"]] == [h.id for h in expected]
    assert body["results"][0]["score"] == pytest.approx(expected[0].score, abs=1e-5)


def test_search_by_uploaded_clip_and_embedding(client, served_index):
    clip = wav_bytes(tone(880, 1.0, TINY_RATE))
    r = client.post("/search", files={"file": ("q.wav", clip, "audio/wav")}, data={"k": "3", "index": "other"})
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]
    assert r.json()["index"] == "other" and top["name"] == "tone880.wav" and top["score"] == pytest.approx(1, abs=1e-3)
    emb = served_index.model.embed_audio([tone(880, 1.0, TINY_RATE)])[0].tolist()
    r = client.post("/search", json={"embedding": emb, "k": 1})
    assert r.json()["results"][0]["name"] == "tone880.wav" and r.json()["query"] == "embedding"


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"json": {"text": "dog", "k": 21}}, 422, "over the limit of 20"),
        ({"json": {"text": "dog", "k": 0}}, 422, "greater than or equal to 1"),
        ({"json": {"text": "dog", "index": "nope"}}, 404, "unknown index 'nope'; available: demo, other"),
        ({"json": {"text": "   "}}, 422, "query is empty"),
        ({"json": {"text": "dog", "embedding": [0.1] * 32}}, 422, "exactly one of text, embedding or file"),
        ({"json": {}}, 422, "exactly one of"),
        ({"json": {"text": "dog", "colour": "red"}}, 422, "Extra inputs are not permitted"),
        ({"json": {"embedding": [0.1, 0.2]}}, 422, r"expected shape \[N, 32\]"),
        ({"json": {"embedding": [0.1] * 31 + ["x"]}}, 422, "valid number"),
        ({"json": ["dog"]}, 422, "JSON object"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ({"content": b"text=dog", "headers": {"content-type": "text/plain"}}, 415, "multipart/form-data"),
        ({"files": {"file": ("q.wav", b"garbage", "audio/wav")}}, 422, "file: cannot decode audio"),
        ({"files": {"file": ("q.wav", wav_bytes(tone(440, 3.0, TINY_RATE)), "audio/wav")}}, 422, "at most 2.0 s"),
        ({"files": {"file": ("q.wav", wav_bytes(np.zeros(60_000, np.float32)), "audio/wav")}}, 413, "byte limit"),
        ({"json": {"text": "x" * 1001}}, 422, "at most 1000"),
    ],
)
def test_bad_requests_get_clear_4xx(client, kwargs, status, message):
    r = client.post("/search", **kwargs)
    assert r.status_code == status, r.text
    assert re.search(message, r.text), r.text


def test_chunked_body_over_the_limit_is_refused(client):
    def chunks():
        for _ in range(30):
            yield b"x" * 10_000

    r = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_audio_streams_indexed_files_and_shard_members(client, served_index, collection):
    rows = {e.member or e.path.rsplit("/", 1)[-1]: (i, e) for i, e in served_index.entries()}
    i, _ = rows["sweep.flac"]
    r = client.get(f"/audio/{i}")
    assert r.status_code == 200 and r.headers["content-type"] == "audio/flac"
    assert r.content == (collection["audio"] / "sweep.flac").read_bytes()
    r = client.get(f"/audio/{i}", headers={"Range": "bytes=0-99"})  # seekable in the browser
    assert r.status_code == 206 and len(r.content) == 100
    i, _ = rows["s0.flac"]
    r = client.get(f"/audio/{i}?index=other")
    assert r.status_code == 200 and r.content == read_member(collection["shard"], "s0.flac")
    # span=true: only the hit's window, as WAV.
    windows = [(j, e) for j, e in served_index.entries() if e.path.endswith("sweep.flac")]
    j, e = windows[2]
    data, rate = sf.read(io.BytesIO(client.get(f"/audio/{j}?span=true").content), dtype="float32")
    full, _ = sf.read(collection["audio"] / "sweep.flac", dtype="float32")
    assert rate == TINY_RATE and len(data) == round((e.end - e.start) * rate)
    np.testing.assert_allclose(data, full[round(e.start * rate) : round(e.end * rate)], atol=1e-4)


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("/audio/999999", 404),
        ("/audio/-1", 404),
        ("/audio/abc", 422),
        ("/audio/..%2F..%2Fetc%2Fpasswd", 404),
        ("/audio/../../etc/passwd", 404),
        ("/audio/1?index=nope", 404),
        ("/static/../serve.py", 404),
    ],
)
def test_audio_serves_nothing_but_indexed_items(client, url, status):
    r = client.get(url)
    assert r.status_code == status
    assert b"root:" not in r.content and b"FastAPI" not in r.content


def test_indices_health_metrics(client):
    indices = client.get("/indices").json()
    assert [d["name"] for d in indices] == ["demo", "other"]
    assert indices[0]["count"] == 18 and indices[0]["model"] == "htsat-tiny" and indices[0]["index"] == "Flat"
    assert client.get("/health").json() == {"status": "ok", "indices": {"demo": 18, "other": 18}}
    client.post("/search", json={"text": "dog"})
    client.post("/search", json={"text": "dog", "k": 999})
    m = client.get("/metrics").json()
    assert m["requests"]["POST /search 200"] >= 1 and m["requests"]["POST /search 422"] >= 1
    assert m["latency_ms"]["POST /search"]["p99"] >= m["latency_ms"]["POST /search"]["p50"] > 0
    assert m["indices"] == {"demo": 18, "other": 18}


def test_web_page_is_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    for f in STATIC_DIR.iterdir():  # nothing fetched from other hosts: works offline
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", f.read_text()), f.name


def test_load_indices_from_config(index_dir, tmp_path):
    command, cfg = parse(["serve", "-c", "configs/retrieval/serve.yaml", "--index", f"main={index_dir}"])
    assert command == "serve" and cfg.indices == [f"main={index_dir}"] and cfg.port == 8000
    indices = load_indices(cfg)
    assert list(indices) == ["main"] and indices["main"].model is not None and indices["main"].read_only
    with pytest.raises(ValueError, match="given twice"):
        load_indices(ServeConfig(indices=[str(index_dir), str(index_dir)]))
    with pytest.raises(ValueError, match="no manifest.json"):
        load_indices(ServeConfig(indices=[str(tmp_path)]))


def test_concurrent_queries_are_encoded_in_batches():
    sizes = []

    def encode(items):
        sizes.append(len(items))
        if "bad" in items:
            raise ValueError("bad query")
        return np.array([[float(i)] for i in items])

    async def main():
        batcher = _Batcher(encode, max_batch=2)
        out = await asyncio.gather(*(batcher(i) for i in range(5)))
        failed = await asyncio.gather(batcher("bad"), batcher(7), return_exceptions=True)
        return out, failed

    out, failed = asyncio.run(main())
    assert [float(o[0]) for o in out] == [0, 1, 2, 3, 4] and sizes[:3] == [2, 2, 1]
    assert all(isinstance(f, ValueError) for f in failed)  # one pass failed: both of its queries see the error
