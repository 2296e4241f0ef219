"""Beyond one process: the Ray Data engine of `retrieval embed`, parallel index builds, sharded search."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clapkit.index import AudioIndex
from clapkit.index.sharded import IndexShards, PartFiles, add_parts, part_groups
from retrieval.__main__ import main
from retrieval.build import build_index
from retrieval.config import BuildConfig, EmbedConfig
from retrieval.embed import embed_collection, finished_parts
from tests.conftest import TINY_RATE, tone
from tests.retrieval.conftest import embed_config

ROOT = Path(__file__).resolve().parents[2]
CLIPS = 200


@pytest.fixture(scope="module")
def many_clips(tmp_path_factory, tiny_model) -> dict[str, Path]:
    """200 short tones (0.3-1.4 s: one or two windows each) and the tiny model on disk."""
    root = tmp_path_factory.mktemp("many")
    audio = root / "audio"
    audio.mkdir()
    rng = np.random.default_rng(0)
    for i in range(CLIPS):
        seconds = float(rng.uniform(0.3, 1.4))
        sf.write(audio / f"clip{i:03d}.wav", tone(150 + 7 * i, seconds, TINY_RATE), TINY_RATE)
    tiny_model.save_pretrained(root / "model")
    return {"audio": audio, "model": root / "model"}


@pytest.fixture(scope="module")
def ray_cluster():
    """A local 2-CPU cluster for the module, dashboard off; drivers in subprocesses join it with address=auto."""
    ray = pytest.importorskip("ray", reason="the scale extra (ray[data]) is installed by `make venv`")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _cfg(clips: dict[str, Path], out: Path, **kw) -> EmbedConfig:
    base = dict(inputs=[str(clips["audio"])], out=str(out), model=str(clips["model"]), workers=0)
    base.update(part_size=25, batch_size=8)
    return EmbedConfig(**{**base, **kw})


def _parts(out: Path) -> tuple[np.ndarray, list[dict]]:
    _, parts = finished_parts(out)
    emb = np.concatenate([np.load(p.embeddings) for p in parts])
    rows = [json.loads(line) for p in parts for line in p.metadata.read_text().splitlines()]
    return emb, rows


@pytest.fixture(scope="module")
def local_parts(many_clips, tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "parts"
    embed_collection(_cfg(many_clips, out), model=tiny_model)
    return out


def test_ray_engine_writes_the_local_engines_parts(many_clips, local_parts, tiny_model, ray_cluster, tmp_path):
    summary = embed_collection(_cfg(many_clips, tmp_path / "parts", engine="ray"), model=tiny_model)
    assert summary["done_now"] == summary["parts"] == CLIPS // 25 and summary["clips"] == CLIPS
    emb, rows = _parts(tmp_path / "parts")
    ref_emb, ref_rows = _parts(local_parts)
    assert len(rows) == len(ref_rows) > CLIPS  # some clips are two windows
    assert [(r["path"], r["start"], r["end"]) for r in rows] == [(r["path"], r["start"], r["end"]) for r in ref_rows]
    assert np.abs(emb - ref_emb).max() <= 1e-5
    # The same plan: the local engine resumes the ray engine's folder (nothing left to do), and vice versa.
    assert embed_collection(_cfg(many_clips, tmp_path / "parts"), model=tiny_model)["done_now"] == 0


def test_ray_engine_refuses_another_run_like_the_local_one(many_clips, local_parts, tiny_model, ray_cluster):
    with pytest.raises(ValueError, match="different run.*window_seconds"):
        embed_collection(_cfg(many_clips, local_parts, engine="ray", window_seconds=0.5), model=tiny_model)


def test_a_killed_ray_driver_resumes_with_the_missing_parts(many_clips, local_parts, ray_cluster, tmp_path):
    out = tmp_path / "parts"
    argv = [sys.executable, "-m", "retrieval", "embed", str(many_clips["audio"]), "--out", str(out)]
    argv += ["--model", str(many_clips["model"]), "--engine", "ray", "--address", "auto"]
    argv += ["--part_size", "5", "--batch_size", "2", "--workers", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not list(out.glob("*.done.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("*.done.json")}
    total = CLIPS // 5
    assert 0 < len(done) < total, f"the driver finished {len(done)} of {total} parts before it was killed"
    rerun = embed_collection(_cfg(many_clips, out, engine="ray", part_size=5, batch_size=2))
    assert (rerun["done_before"], rerun["done_now"]) == (len(done), total - len(done))
    assert {name: (out / name).stat().st_mtime_ns for name in done} == done  # finished parts not rewritten
    emb, rows = _parts(out)
    ref_emb, ref_rows = _parts(local_parts)
    assert [r["path"] for r in rows] == [r["path"] for r in ref_rows]
    assert np.abs(emb - ref_emb).max() <= 1e-5


# ------------------------------------------------------------------------------------------ index building
def _clustered(n: int, dim: int = 32, clusters: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    return (centres[rng.integers(clusters, size=n)] + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)


def _part_files(root: Path, x: np.ndarray, sizes: list[int]) -> list[PartFiles]:
    parts, start = [], 0
    for i, size in enumerate(sizes):
        emb, meta = root / f"p{i}.npy", root / f"p{i}.jsonl"
        np.save(emb, x[start : start + size])
        meta.write_text("".join(json.dumps({"path": f"clip{j}.wav"}) + "\n" for j in range(start, start + size)))
        parts.append(PartFiles(emb, meta))
        start += size
    return parts


def test_part_groups_are_contiguous_and_balanced():
    groups = part_groups([10, 10, 10, 10, 40], 3)
    assert [list(g) for g in groups] == [[0, 1, 2], [3], [4]]  # cut at the boundaries nearest 1/3 and 2/3
    assert [list(g) for g in part_groups([10] * 6, 3)] == [[0, 1], [2, 3], [4, 5]]
    assert part_groups([5], 4) == [range(0, 1)] and part_groups([], 2) == []


@pytest.mark.parametrize("layout", ["flat", "IVF32,Flat"])
def test_parallel_add_equals_adding_the_parts_in_turn(layout, tmp_path):
    x = _clustered(3000)
    parts = _part_files(tmp_path, x, [1000, 700, 1300])
    built = {}
    for workers in (1, 3):
        index = AudioIndex(32, index=layout, expected_size=len(x))
        index.prepare(len(x))
        if index.train_points:
            index.train(x[::3])
        add_parts(index, parts, workers=workers, progress=False)
        built[workers] = index
    q = _clustered(50, seed=9)
    for nprobe in (None, 4):
        s1, i1 = built[1].knn(q, 10, nprobe=nprobe)
        s3, i3 = built[3].knn(q, 10, nprobe=nprobe)
        assert np.array_equal(i1, i3) and np.allclose(s1, s3, atol=1e-6)
    assert len(built[3]) == len(x) and built[3].get([2999])[0].path == "clip2999.wav"


def test_sharded_build_of_the_parts_equals_the_single_build(index_dir, tmp_path):
    parts = str(index_dir.parent / "parts")
    summary = build_index(BuildConfig(parts=parts, out=str(tmp_path / "index"), index="flat", workers=3))
    assert (
        summary["workers"] == 3 and summary["index"] == "Flat" and summary["count"] == len(AudioIndex.load(index_dir))
    )
    single, sharded = AudioIndex.load(index_dir), AudioIndex.load(tmp_path / "index")
    q = np.random.default_rng(1).standard_normal((8, 32)).astype(np.float32)
    a, b = single.search(embedding=q, k=5), sharded.search(embedding=q, k=5)
    assert [[(h.id, h.path, h.start) for h in hits] for hits in a] == [
        [(h.id, h.path, h.start) for h in hits] for hits in b
    ]
    assert np.allclose([[h.score for h in hits] for hits in a], [[h.score for h in hits] for hits in b], atol=1e-6)


def test_build_reports_the_chosen_layout_setting_recall_and_query_time(index_dir, tmp_path, capsys):
    parts = str(index_dir.parent / "parts")
    argv = ["build", "--parts", parts, "--out", str(tmp_path / "ivf"), "--index", "IVF2,Flat", "--train_size", "18"]
    assert main([*argv, "--max_memory", "1GiB", "--max_query_ms", "50", "--workers", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["index"] == "IVF2,Flat" and out["tuned"]["param"] == "nprobe"
    assert out["tuned"]["met"] and out["tuned"]["recall"] >= 0.95 and out["tuned"]["ms_per_query"] <= 50
    assert out["search_defaults"]["nprobe"] == out["tuned"]["value"]


# ------------------------------------------------------------------------------------------ sharded search
def test_shards_searched_as_one_equal_one_index(tmp_path):
    x = _clustered(1200, seed=3)
    parts = _part_files(tmp_path, x, [500, 300, 400])
    whole = AudioIndex(32, index="flat")
    add_parts(whole, parts, progress=False)
    shards = {}
    for i, part in enumerate(parts):
        shards[f"s{i}"] = AudioIndex(32, index="flat")
        add_parts(shards[f"s{i}"], [part], progress=False)
    many = IndexShards(shards)
    q = _clustered(20, seed=4)
    ours, ref = many.search(embedding=q, k=10), whole.search(embedding=q, k=10)
    assert len(many) == 1200
    for a, b in zip(ours, ref):
        assert [h.path for h in a] == [h.path for h in b]
        assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-6)
        shard_of = {h.path: h.fields["shard"] for h in a}
        assert all(many.get([h.id], shard_of[h.path])[0].path == h.path for h in a)


def test_shards_of_another_width_are_refused(index_dir, tmp_path):
    other = AudioIndex(16, index="flat")
    other.add_embeddings(np.eye(16, dtype=np.float32))
    with pytest.raises(ValueError, match="dim 16"):
        IndexShards([AudioIndex.load(index_dir), other])


@pytest.fixture(scope="module")
def two_shards(collection, tiny_model, tmp_path_factory) -> dict[str, Path]:
    """The collection's files and its shard embedded and indexed apart (two index folders of one collection),
    and the same built as one index."""
    root = tmp_path_factory.mktemp("shards")
    folders = {}
    for name, inputs in (("files", [collection["audio"]]), ("tar", [collection["shard"]])):
        cfg = embed_config(collection, root / f"parts-{name}", inputs=[str(i) for i in inputs])
        embed_collection(cfg, model=tiny_model)
        build_index(BuildConfig(parts=str(root / f"parts-{name}"), out=str(root / name), index="flat"))
        folders[name] = root / name
    embed_collection(embed_config(collection, root / "parts-all"), model=tiny_model)
    build_index(BuildConfig(parts=str(root / "parts-all"), out=str(root / "all"), index="flat"))
    folders["all"] = root / "all"
    return folders


def _key(hit: dict) -> tuple:
    return round(hit["score"], 5), hit["path"], hit["member"], hit["start"]


def test_cli_searches_shards_as_one(two_shards, collection, capsys):
    from clapkit import cli

    both = f"{two_shards['files']},{two_shards['tar']}"
    model = str(collection["model"])
    assert cli.main(["search", both, "a tone", "-k", "20", "--model", model, "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert cli.main(["search", str(two_shards["all"]), "a tone", "-k", "20", "--model", model, "--json"]) == 0
    ref = json.loads(capsys.readouterr().out)
    assert len(hits) == len(ref) == 18  # every window of the collection, from both shards
    assert np.allclose([h["score"] for h in hits], [h["score"] for h in ref], atol=1e-6)  # best first, both
    # The same windows with the same scores (the shard's sweep clip ties with sweep.flac's first window).
    assert sorted(_key(h) for h in hits) == sorted(_key(h) for h in ref)
    assert {h["fields"]["shard"] for h in hits} == {"files", "tar"}
    assert cli.main(["search", both, "a tone", "-k", "3"]) == 0  # the model recorded in the manifests
    assert re.search(r"^\s+1\s+\S+\s+(files|tar):", capsys.readouterr().out, re.M)


def test_service_serves_shards_as_one_index(two_shards):
    from fastapi.testclient import TestClient

    from retrieval.config import ServeConfig
    from retrieval.serve import create_app, load_indices

    cfg = ServeConfig(indices=[f"both={two_shards['files']},{two_shards['tar']}", f"all={two_shards['all']}"])
    with TestClient(create_app(load_indices(cfg), cfg)) as client:
        got = client.post("/search", json={"text": "a chirp", "k": 18, "index": "both"}).json()["results"]
        ref = client.post("/search", json={"text": "a chirp", "k": 18, "index": "all"}).json()["results"]
        assert sorted(_key(h) for h in got) == sorted(_key(h) for h in ref)
        tar_hit = next(h for h in got if h["fields"]["shard"] == "tar")
        assert "&shard=tar" in tar_hit["audio_url"]
        audio = client.get(tar_hit["audio_url"])
        assert audio.status_code == 200 and audio.content[:4] == b"fLaC"  # the shard member, as stored
        assert client.get(f"/audio/{tar_hit['id']}?index=both").status_code == 404  # ids are per shard
        listed = {d["name"]: d for d in client.get("/indices").json()}
        assert listed["both"]["count"] == listed["all"]["count"] == 18 and listed["both"]["kind"] == "shards"
