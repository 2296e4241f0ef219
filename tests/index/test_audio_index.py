"""AudioIndex: every layout end to end, tuning, training, query validation, windows and model queries."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from clapkit.index import INDEX_TYPES, AudioIndex
from tests.conftest import TINY_RATE, tone
from tests.index.conftest import DIM, clustered, exact_top


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
