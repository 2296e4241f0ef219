"""The search service under load: requests/s and p50/p99 latency with 16 concurrent clients on loopback.

Setup: ``clapkit-small`` (its real MiniLM text tower and aisfx audio tower; heads untrained, which does not
change the cost) saved to a temporary folder, an index of ``--n`` mixture vectors in its 256-d space
(``index: auto`` → HNSW32), and ``python -m retrieval serve`` in its own process. Each scenario runs
``--clients`` threads with keep-alive connections for ``--seconds`` after a short warm-up:

- ``embedding``: POST /search with a 256-d vector (HTTP + validation + FAISS + SQLite, no model);
- ``text``: POST /search with a caption (adds the text encoder);
- ``clip``: POST /search with a 2 s WAV upload (adds decoding, resampling and the audio encoder);
- ``audio``: GET /audio/{id}?span=true (streams a 1 s window of an indexed file).

Clients and server share the machine's cores. Run: ``python -m benchmarks.bench_service [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import soundfile as sf

import clapkit
from benchmarks.bench_index import mixture
from benchmarks.common import machine
from clapkit.index import AudioIndex

CAPTIONS = ["a dog barking", "rain on a window", "a car passing by", "church bells", "someone typing", "applause"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(root: Path, n: int) -> tuple[Path, Path]:
    """Model folder, a few audio files and an index folder under ``root``."""
    model = clapkit.create_model("clapkit-small").eval()
    model.save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    files = []
    for i in range(8):
        files.append(root / f"clip{i}.wav")
        sf.write(files[-1], (0.1 * rng.standard_normal(model.sample_rate * 3)).astype(np.float32), model.sample_rate)
    x = mixture(n, model.embed_dim, clusters=max(1, n // 1000), sigma=1.0, rank=32, seed=1)
    entries = [{"path": str(files[i % len(files)]), "start": 0.0, "end": 1.0, "duration": 3.0} for i in range(n)]
    index = AudioIndex.for_model(model, source=root / "model", expected_size=n)
    index.add_embeddings(x, entries)
    index.save(root / "index")
    return root / "model", root / "index"


def wav(seconds: float, rate: int = 44100) -> bytes:
    buf = io.BytesIO()
    sf.write(
        buf,
        (0.1 * np.random.default_rng(1).standard_normal(int(seconds * rate))).astype(np.float32),
        rate,
        format="WAV",
    )
    return buf.getvalue()


CLIP = wav(2.0)


def request_for(scenario: str, dim: int, i: int) -> tuple[str, str, bytes, dict[str, str]]:
    if scenario == "embedding":
        vec = np.random.default_rng(i).standard_normal(dim).round(5).tolist()
        return "POST", "/search", json.dumps({"embedding": vec, "k": 10}).encode(), {"Content-Type": "application/json"}
    if scenario == "text":
        body = json.dumps({"text": CAPTIONS[i % len(CAPTIONS)], "k": 10}).encode()
        return "POST", "/search", body, {"Content-Type": "application/json"}
    if scenario == "clip":
        boundary = "benchboundary"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n10\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="q.wav"\r\n'
                "Content-Type: audio/wav\r\n\r\n"
            ).encode()
            + CLIP
            + f"\r\n--{boundary}--\r\n".encode()
        )
        return "POST", "/search", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    return "GET", f"/audio/{i % 1000}?span=true", b"", {}


def load(port: int, scenario: str, dim: int, clients: int, seconds: float) -> dict[str, float]:
    """``clients`` threads sending requests back to back for ``seconds``; latencies in ms."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine, i = [], c * 1_000_000
        while time.perf_counter() < stop:
            method, url, body, headers = request_for(scenario, dim, i)
            start = time.perf_counter()
            conn.request(method, url, body=body or None, headers=headers)
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - start)
            if response.status != 200:
                with lock:
                    errors[0] += 1
            i += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    begin = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - begin
    ms = np.array(latencies) * 1000
    return {
        "requests": len(ms),
        "rps": len(ms) / wall,
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "errors": errors[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="indexed vectors")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per scenario")
    parser.add_argument("--scenarios", default="embedding,text,clip,audio")
    parser.add_argument("--max-batch", type=int, default=32, help="the server's max_batch (1 = no batching)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        start = time.perf_counter()
        _, index_dir = prepare(Path(tmp), args.n)
        manifest = AudioIndex.read_manifest(index_dir)
        print(
            f"index: {manifest['count']} × {manifest['dim']} {manifest['index']} ({time.perf_counter() - start:.0f} s)"
        )
        port = free_port()
        cmd = [sys.executable, "-m", "retrieval", "serve", "--index", f"bench={index_dir}", "--port", str(port)]
        server = subprocess.Popen([*cmd, "--max_batch", str(args.max_batch), "--log_level", "warning"])
        try:
            deadline = time.time() + 120
            while True:
                try:
                    http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/health")
                    break
                except OSError:
                    if time.time() > deadline or server.poll() is not None:
                        raise SystemExit("the server did not come up") from None
                    time.sleep(0.5)
            rows = []
            for scenario in args.scenarios.split(","):
                load(port, scenario, manifest["dim"], args.clients, 2.0)  # warm-up
                rows.append((scenario, load(port, scenario, manifest["dim"], args.clients, args.seconds)))
                print(f"  {scenario}: {rows[-1][1]}", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"\nmax_batch {args.max_batch}")
    print(f"\n| scenario ({args.clients} clients, {args.seconds:.0f} s) | requests/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|")
    for scenario, r in rows:
        print(f"| {scenario} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} |")


if __name__ == "__main__":
    main()
