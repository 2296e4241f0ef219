"""AudioIndex: layouts, metadata, windows, search by text / audio / embedding, save/load, model checks, CLI."""

from __future__ import annotations

import io
import json

import faiss
import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from clapkit import cli
from clapkit.index import INDEX_TYPES, AudioIndex, Entry, choose_index, model_info, parse_bytes, weights_sha256
from clapkit.index_sources import expand_inputs, iter_shard, read_member
from tests.conftest import TINY_RATE, build_tiny_model, tone

DIM = 32


def clustered(n: int, dim: int = DIM, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres (fixed; ``seed`` draws the points) [n, dim]."""
    centres = np.random.default_rng(0).standard_normal((clusters, dim))
    rng = np.random.default_rng(seed + 1)
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_top(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1)[:, :k]


# ------------------------------------------------------------------------------------------ layout choice
def test_parse_bytes():
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("4G") == parse_bytes("4GB") == parse_bytes("4 GiB") == 4 * 2**30
    assert parse_bytes(1000) == 1000
    with pytest.raises(ValueError, match="memory size"):
        parse_bytes("lots")


def test_auto_choice_follows_size_and_budget():
    assert choose_index(5_000, 512).key == "Flat"
    assert choose_index(50_000, 512).key == "IVF1024,Flat"
    # 1M × 512 floats are 2 GB: IVF-Flat fits 2 GiB; at 1 GiB only PQ codes do.
    plan = choose_index(1_000_000, 512, "2GiB")
    assert plan.key == "IVF4096,Flat" and plan.kind == "ivf-flat" and plan.bytes <= parse_bytes("2GiB")
    plan = choose_index(1_000_000, 512, "1GiB")
    assert plan.kind == "ivf-pq" and plan.key == "IVF4096,PQ64x8"
    assert choose_index(100_000_000, 512, "16GiB").key.startswith("IVF32768_HNSW32,PQ")
    with pytest.raises(ValueError, match="raise memory_budget"):
        choose_index(100_000_000, 512, "100MiB")


def test_named_and_factory_layouts():
    assert choose_index(10_000, 64, index="ivf-flat").key == "IVF256,Flat"
    assert choose_index(10_000, 64, index="IVF16,SQ8").kind == "custom"
    with pytest.raises(ValueError, match="flat, hnsw, ivf-flat, ivf-pq"):
        choose_index(10, 64, index="annoy")


# ------------------------------------------------------------------------------------------ every layout
@pytest.mark.parametrize("kind", INDEX_TYPES.names())
def test_layout_search_remove_add_save_load(kind, tmp_path):
    x = clustered(3000)
    entries = [{"path": f"f{i}.wav", "start": float(i), "end": i + 1.0, "labels": ["l"]} for i in range(len(x))]
    index = AudioIndex.build(x[:2500], entries[:2500], index=kind)
    assert index.kind == ("ivf" if kind.startswith("ivf") else kind) and len(index) == 2500
    q = x[:50]
    scores, ids = index.knn(q, 10, nprobe=16, ef_search=128)
    truth = exact_top(x[:2500], q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)])
    assert recall >= (0.3 if kind == "ivf-pq" else 0.9), recall
    assert np.all(np.diff(scores, axis=1) <= 1e-5)  # best first

    assert index.remove([0, 1, 2, 10_000]) == 3  # unknown ids are ignored
    _, ids = index.knn(q[:3], 10, nprobe=16)
    assert not {0, 1, 2} & set(ids.ravel().tolist())
    assert index.get([0, 3])[0] is None and index.get([3])[0].path == "f3.wav"

    new = index.add_embeddings(x[2500:], entries[2500:])
    assert new[0] == 2500 and len(index) == 2997  # ids are never reused

    index.save(tmp_path / "ix")
    loaded = AudioIndex.load(tmp_path / "ix")
    a = index.search(embedding=q[:5], k=5, nprobe=16)
    b = loaded.search(embedding=q[:5], k=5, nprobe=16)
    assert [[h.id for h in r] for r in a] == [[h.id for h in r] for r in b]
    assert len(loaded) == 2997 and loaded.key == index.key
    assert not {0, 1, 2} & {h.id for r in b for h in r}  # removals survive the round trip
    assert loaded.add_embeddings(x[:1])[0] == 3000


def test_search_defaults_are_tuned_to_a_target_recall():
    x = clustered(4000)  # 20 clusters over 64 lists: a query's neighbours spread over several lists
    q = clustered(200, seed=5)

    def recall(index, queries, truth, **kw):
        _, ids = index.knn(queries, 10, **kw)
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)])

    untuned = AudioIndex.build(x, index="ivf-flat", target_recall=None)
    assert untuned.search_defaults["nprobe"] == 8  # max(8, nlist // 64) for nlist=64
    truth = exact_top(x, q, 10)
    assert recall(untuned, q, truth, nprobe=1) < recall(untuned, q, truth, nprobe=64) == pytest.approx(1.0)
    # IVF: clustered data; HNSW: one isotropic blob, where every point is nearly equidistant (hard for graphs).
    for kind, param, lowest, clusters in (("ivf-flat", "nprobe", 1, 20), ("hnsw", "ef_search", 16, 1)):
        x, q = clustered(4000, clusters=clusters), clustered(200, clusters=clusters, seed=5)
        sample, truth = x[:256], exact_top(x, q, 10)
        index = AudioIndex.build(x, index=kind, target_recall=None)
        result = index.tune(sample, target_recall=0.99)
        value = result["value"]
        assert result["param"] == param and index.search_defaults[param] == value and value > lowest
        # The cheapest setting that reaches the target: one step down misses it.
        assert recall(index, sample, exact_top(x, sample, 10)) >= 0.99
        assert recall(index, sample, exact_top(x, sample, 10), **{param: value // 2}) < 0.99
        assert recall(index, q, truth) >= 0.95  # and it carries over to fresh queries
    pinned = AudioIndex.build(x, index="hnsw", ef_search=16)
    assert pinned.search_defaults["ef_search"] == 16  # given explicitly: not tuned
    assert AudioIndex.build(x, index="flat").tune(sample) == {}


def test_auto_index_is_fixed_by_expected_size():
    index = AudioIndex(DIM, expected_size=50_000)
    index.add_embeddings(clustered(1100))  # the first batch trains the 1024 lists
    assert index.key == "IVF1024,Flat"
    small = AudioIndex(DIM)
    small.add_embeddings(clustered(300))
    assert small.key == "Flat"


def test_ivf_refuses_too_little_training_data():
    index = AudioIndex(DIM, index="IVF256,Flat")
    with pytest.raises(ValueError, match="needs at least 256 training vectors"):
        index.add_embeddings(clustered(100))


# ------------------------------------------------------------------------------------------ metadata
def test_metadata_round_trip_and_validation(tmp_path):
    x = clustered(3)
    entries = [
        Entry("a.flac", 0.0, 10.0, 30.0, ["a dog barks"], ["dog"], None, {"split": "test"}),
        {"path": "s.tar", "member": "k1.flac", "captions": "rain", "labels": "weather", "site": 7},
        "c.wav",
    ]
    index = AudioIndex.build(x, entries, index="flat")
    hits = index.search(embedding=x[1], k=1)[0]
    assert hits[0].to_dict() | {"score": 0} == {
        "id": 1,
        "score": 0,
        "path": "s.tar",
        "start": 0.0,
        "end": None,
        "duration": None,
        "captions": ["rain"],
        "labels": ["weather"],
        "member": "k1.flac",
        "fields": {"site": 7},
    }
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    index.save(tmp_path / "ix")
    assert AudioIndex.load(tmp_path / "ix").get([0])[0] == Entry.coerce(entries[0], "e")
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        index.add_embeddings(x[:1], [{"path": "x", "fields": {"bad": object()}}])
    with pytest.raises(ValueError, match="one per row"):
        index.add_embeddings(x, ["only one"])
    with pytest.raises(ValueError, match=r"expected shape \[N, 32\]"):
        index.add_embeddings(np.zeros((2, 8), np.float32))
    with pytest.raises(ValueError, match="NaN/Inf"):
        index.add_embeddings(np.full((1, DIM), np.nan, np.float32))
    assert len(index) == 3  # failed adds leave nothing behind


def test_query_validation():
    index = AudioIndex.build(clustered(10), index="flat")
    with pytest.raises(ValueError, match="exactly one of"):
        index.search(k=3)
    with pytest.raises(ValueError, match="exactly one of"):
        index.search(text="x", embedding=clustered(1))
    with pytest.raises(ValueError, match="need the index's model"):
        index.search(text="a dog")
    with pytest.raises(ValueError, match="k must be positive"):
        index.knn(clustered(1), 0)
    hits = index.search(embedding=clustered(2, seed=1), k=50)
    assert len(hits) == 2 and len(hits[0]) == 10  # fewer vectors than k: no padding rows


# ------------------------------------------------------------------------------------------ with a model
@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec")
    files = {}
    for name, freq, seconds in (("low", 220, 0.6), ("mid", 880, 1.0)):
        files[name] = root / f"{name}.wav"
        sf.write(files[name], tone(freq, seconds, TINY_RATE), TINY_RATE)
    t = np.arange(int(3.2 * TINY_RATE)) / TINY_RATE  # a 200 Hz → 6.6 kHz sweep: every window differs
    files["long"] = root / "long.wav"
    sf.write(files["long"], (0.5 * np.sin(2 * np.pi * (200 * t + 1000 * t**2))).astype(np.float32), TINY_RATE)
    return files


def test_long_recordings_become_windows(tiny_model, recordings):
    index = AudioIndex.for_model(tiny_model, index="flat")
    ids = index.add_audio([recordings["low"], recordings["long"]], [{"labels": ["low"]}, None])
    spans = [(e.path.split("/")[-1], e.start, e.end, e.duration) for e in index.get(ids)]
    # 1 s windows, 0.5 s hop (the model's clip/hop); the last window ends at the end of the recording.
    assert spans[0] == ("low.wav", 0.0, 0.6, 0.6)
    long = [s for s in spans if s[0] == "long.wav"]
    assert [(s, e) for _, s, e, _ in long] == [(0.0, 1.0), (0.5, 1.5), (1.0, 2.0), (1.5, 2.5), (2.0, 3.0), (2.2, 3.2)]
    assert index.get(ids[:1])[0].labels == ["low"] and index.window == {"seconds": 1.0, "hop_seconds": 0.5}
    # Each window's vector is the model's embedding of exactly that span.
    wave, _ = sf.read(recordings["long"], dtype="float32")
    scores, got = index.knn(tiny_model.embed_audio([wave[16000:32000]]), 2)
    assert index.get(got[0])[0].start == 1.0
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5) and scores[0, 1] < scores[0, 0] - 1e-4


def test_search_by_text_audio_and_embedding(tiny_model, recordings):
    index = AudioIndex.for_model(tiny_model, index="hnsw")
    index.add_audio(list(recordings.values()), window_seconds=0.5, hop_seconds=0.5)
    by_text = index.search(text=["a high tone", "a low hum"], k=3)
    assert len(by_text) == 2 and all(len(r) == 3 for r in by_text)
    emb = tiny_model.embed_text(["a high tone"])
    assert [h.id for h in index.search(embedding=emb, k=3)[0]] == [h.id for h in by_text[0]]
    # audio → audio: a clip of the 880 Hz tone finds the 880 Hz recording first, from a file or an array.
    for query in (recordings["mid"], tone(880, 0.5, TINY_RATE), (tone(880, 0.5, 8000), 8000)):
        top = index.search(audio=query, k=1)[0][0]
        assert top.path.endswith("mid.wav") and top.score == pytest.approx(1.0, abs=1e-3)


def test_model_identity_is_checked(tiny_model, recordings, tmp_path):
    index = AudioIndex.for_model(tiny_model, source="somewhere", index="flat")
    index.add_audio([recordings["low"]])
    index.save(tmp_path / "ix")
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert manifest["model"]["weights_sha256"] == weights_sha256(tiny_model)
    assert manifest["dim"] == DIM and manifest["metric"] == "cosine" and manifest["index"] == "Flat"
    assert AudioIndex.load(tmp_path / "ix", model=tiny_model).model is tiny_model
    other = build_tiny_model(seed=1)
    with pytest.raises(ValueError, match="model mismatch.*rebuild the index"):
        AudioIndex.load(tmp_path / "ix", model=other)
    with pytest.raises(ValueError, match="model mismatch"):
        AudioIndex.load(tmp_path / "ix").attach(other)
    wider = build_tiny_model(embed_dim=16)
    with pytest.raises(ValueError, match="16 dims"):
        AudioIndex.load(tmp_path / "ix").attach(wider)
    assert model_info(tiny_model).weights_sha256 == manifest["model"]["weights_sha256"]


def test_weights_hash_tracks_in_place_updates():
    model = build_tiny_model()
    before = weights_sha256(model)
    assert weights_sha256(model) == before
    with __import__("torch").no_grad():
        model.logit_scale.add_(1.0)
    assert weights_sha256(model) != before


# ------------------------------------------------------------------------------------------ persistence
def test_save_is_atomic(tmp_path, monkeypatch):
    x = clustered(20)
    AudioIndex.build(x, index="flat").save(tmp_path / "ix")

    def broken(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        AudioIndex.build(x[:5], index="flat").save(tmp_path / "ix")
    assert len(AudioIndex.load(tmp_path / "ix")) == 20  # the old index is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]  # no temporary folders left


def test_read_only_and_corrupt_folders(tmp_path):
    x = clustered(20)
    AudioIndex.build(x, index="flat").save(tmp_path / "ix")
    ro = AudioIndex.load(tmp_path / "ix", read_only=True)
    assert len(ro.search(embedding=x[0], k=3)[0]) == 3
    with pytest.raises(ValueError, match="read-only"):
        ro.add_embeddings(x[:1])
    with pytest.raises(ValueError, match="read-only"):
        ro.remove([0])
    with pytest.raises(ValueError, match="no manifest.json"):
        AudioIndex.load(tmp_path)
    (tmp_path / "ix" / "manifest.json").write_text("{")
    with pytest.raises(ValueError, match="malformed JSON"):
        AudioIndex.load(tmp_path / "ix")
    (tmp_path / "ix" / "manifest.json").write_text('{"format": "clapkit-audio-index", "version": 1}')
    with pytest.raises(ValueError, match="manifest lacks dim, metric"):
        AudioIndex.load(tmp_path / "ix")


def test_inputs_are_expanded_and_checked(tmp_path):
    (tmp_path / "a").mkdir()
    sf.write(tmp_path / "a" / "x.flac", tone(440, 0.1, TINY_RATE), TINY_RATE)
    _shard(tmp_path / "a" / "s.tar", [("k", 440, "tone")])
    (tmp_path / "notes.txt").write_text("hi")
    files, shards = expand_inputs([tmp_path / "a", tmp_path / "a" / "x.flac"])
    assert files == [str(tmp_path / "a" / "x.flac")] and shards == [str(tmp_path / "a" / "s.tar")]
    with pytest.raises(ValueError, match="notes.txt: not an audio file"):
        expand_inputs([tmp_path / "notes.txt"])
    with pytest.raises(ValueError, match="no such file or folder"):
        expand_inputs([tmp_path / "missing"])
    clips = list(iter_shard(tmp_path / "a" / "s.tar"))
    assert [c.member for c in clips] == ["k.flac"] and clips[0].entry()["captions"] == ["tone"]
    assert read_member(tmp_path / "a" / "s.tar", "k.flac") == clips[0].data
    with pytest.raises(ValueError, match="no member"):
        read_member(tmp_path / "a" / "s.tar", "nope.flac")


# ------------------------------------------------------------------------------------------ CLI
def _shard(path, clips):
    with wds.TarWriter(str(path)) as w:
        for key, freq, caption in clips:
            buf = io.BytesIO()
            sf.write(buf, tone(freq, 1.5, TINY_RATE), TINY_RATE, format="FLAC")
            meta = {"captions": [caption], "labels": ["tone"], "negatives": ["silence"], "source": "synth"}
            w.write({"__key__": key, "flac": buf.getvalue(), "json": json.dumps(meta).encode()})


def test_cli_build_and_search(tiny_model, recordings, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "model")
    _shard(tmp_path / "s0.tar", [("a", 440, "a 440 Hz tone"), ("b", 2000, "a 2 kHz tone")])
    (tmp_path / "audio").mkdir()
    for name in ("low", "mid"):
        (tmp_path / "audio" / f"{name}.wav").write_bytes(recordings[name].read_bytes())
    (tmp_path / "audio" / "broken.wav").write_bytes(b"not audio")
    out = tmp_path / "ix"
    argv = ["index", "build", str(tmp_path / "audio"), str(tmp_path / "s0.tar"), "--model", str(tmp_path / "model")]
    assert cli.main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "indexed 6 windows as Flat" in printed.out and "skipped 1" in printed.err and "broken.wav" in printed.err
    assert cli.main(["search", str(out), "a tone", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and {"path", "start", "end", "score"} <= set(hits[0])
    assert cli.main(["search", str(out), "--audio", str(recordings["mid"]), "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["path"].endswith("mid.wav")
    index = AudioIndex.load(out)
    shard_rows = [e for _, e in index.entries() if e.member]
    assert {e.member for e in shard_rows} == {"a.flac", "b.flac"}
    assert shard_rows[0].captions == ["a 440 Hz tone"] and shard_rows[0].fields == {"source": "synth"}
    assert cli.main(["search", str(out)]) == 2  # neither text nor --audio
    assert "give a text query" in capsys.readouterr().err
