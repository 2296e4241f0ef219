import numpy as np
import pytest
import torch

from clapkit.evaluate.retrieval import caption_owner_from_groups, load_retrieval_set, retrieval_metrics, retrieval_ranks

# Similarities [captions, audio] chosen by hand; captions 0-1 describe clip 0, 2 clip 1, 3-4 clip 2.
SIM = np.array(
    [
        [0.9, 0.1, 0.2],
        [0.3, 0.8, 0.1],
        [0.5, 0.4, 0.6],
        [0.2, 0.3, 0.7],
        [0.1, 0.5, 0.4],
    ],
    dtype=np.float32,
)
OWNER = np.array([0, 0, 1, 2, 2])


def embeddings(sim):
    """Audio = identity, text = rows of ``sim``: then text @ audio.T == sim exactly."""
    return np.eye(sim.shape[1], dtype=np.float32), sim


def test_hand_built_ranks_and_metrics():
    audio, text = embeddings(SIM)
    t2a, ranks, counts = retrieval_ranks(audio, text, OWNER)
    assert t2a.tolist() == [0, 1, 2, 0, 1]
    assert ranks.tolist() == [[0, 2], [2, -1], [0, 2]]
    assert counts.tolist() == [2, 1, 2]
    m = retrieval_metrics(audio, text, OWNER)
    assert m["text_to_audio_R@1"] == pytest.approx(2 / 5)
    assert m["text_to_audio_R@5"] == pytest.approx(1.0)
    assert m["text_to_audio_mAP@10"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 + 1 / 2) / 5)
    assert m["text_to_audio_mean_rank"] == pytest.approx(1 + 4 / 5)
    assert m["audio_to_text_R@1"] == pytest.approx(2 / 3)
    assert m["audio_to_text_R@10"] == pytest.approx(1.0)
    ap = [(1 + 2 / 3) / 2, 1 / 3, (1 + 2 / 3) / 2]
    assert m["audio_to_text_mAP@10"] == pytest.approx(np.mean(ap))
    assert m["audio_to_text_median_rank"] == 1.0


def test_ties_count_against_the_model():
    audio, text = embeddings(np.ones((4, 4), dtype=np.float32))
    owner = np.arange(4)
    assert retrieval_ranks(audio, text, owner)[0].tolist() == [3, 3, 3, 3]
    m = retrieval_metrics(audio, text, owner)
    assert m["text_to_audio_R@1"] == 0.0 and m["audio_to_text_R@1"] == 0.0


def reference(audio, text, owner):
    """Full-matrix argsort reference of the AudioCaps/Clotho protocol."""
    sim = text @ audio.T
    t2a = np.array([np.where(np.argsort(-row, kind="stable") == owner[i])[0][0] for i, row in enumerate(sim)])
    best, aps = [], []
    for a in range(audio.shape[0]):
        order = np.argsort(-sim[:, a], kind="stable")
        pos = np.sort(np.where(np.isin(order, np.where(owner == a)[0]))[0])
        best.append(pos[0])
        kept = pos[pos < 10]
        aps.append(np.sum(np.arange(1, len(kept) + 1) / (kept + 1)) / len(pos))
    return t2a, np.array(best), np.array(aps)


@pytest.mark.parametrize("block", [1, 3, 1000])
def test_blocks_match_full_matrix_reference(block):
    rng = np.random.default_rng(0)
    groups = rng.integers(1, 6, size=40)  # 1-5 captions per clip
    owner = caption_owner_from_groups(groups)
    audio = rng.normal(size=(40, 8)).astype(np.float32)
    text = audio[owner] + 1.5 * rng.normal(size=(len(owner), 8)).astype(np.float32)
    audio /= np.linalg.norm(audio, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    t2a, best, aps = reference(audio, text, owner)
    ranks_t2a, ranks, _ = retrieval_ranks(audio, text, owner, block_size=block)
    assert ranks_t2a.tolist() == t2a.tolist()
    assert ranks[:, 0].tolist() == best.tolist()
    m = retrieval_metrics(torch.from_numpy(audio), torch.from_numpy(text), owner, block_size=block)
    for k in (1, 5, 10):
        assert m[f"text_to_audio_R@{k}"] == pytest.approx(np.mean(t2a < k))
        assert m[f"audio_to_text_R@{k}"] == pytest.approx(np.mean(best < k))
    assert m["audio_to_text_mAP@10"] == pytest.approx(aps.mean())
    assert 0 < m["text_to_audio_R@1"] < m["text_to_audio_R@10"] < 1  # a non-trivial case


def test_bad_inputs():
    audio, text = embeddings(SIM)
    with pytest.raises(ValueError, match="one clip index per caption"):
        retrieval_metrics(audio, text, OWNER[:3])
    with pytest.raises(ValueError, match="no caption"):
        retrieval_metrics(np.eye(4, 3, dtype=np.float32), text, OWNER)


def test_load_csv_long_wide_and_jsonl(tmp_path):
    (tmp_path / "long.csv").write_text("path,caption\na.wav,a dog\na.wav,a dog barks\nb.wav,rain\n")
    s = load_retrieval_set(tmp_path / "long.csv")
    assert s.audio == [str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]
    assert s.caption_audio.tolist() == [0, 0, 1]
    (tmp_path / "wide.csv").write_text("file_name,caption_1,caption_2\na.wav,a dog,\nb.wav,rain,heavy rain\n")
    s = load_retrieval_set(tmp_path / "wide.csv", audio_root="/data")
    assert s.audio == ["/data/a.wav", "/data/b.wav"] and s.captions == ["a dog", "rain", "heavy rain"]
    (tmp_path / "x.jsonl").write_text('{"path": "a.wav", "captions": ["x", "y"]}\n{"path": "b.wav", "caption": "z"}\n')
    assert load_retrieval_set(tmp_path / "x.jsonl").caption_audio.tolist() == [0, 0, 1]
    (tmp_path / "bad.csv").write_text("audio,text\na.wav,x\n")
    with pytest.raises(ValueError, match="expected columns"):
        load_retrieval_set(tmp_path / "bad.csv")
