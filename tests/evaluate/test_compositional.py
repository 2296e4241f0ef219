import warnings

import numpy as np
import pytest

from clapkit.evaluate.compositional import compositional_scores, load_compa_csv, random_baseline, winoground_scores


@pytest.mark.parametrize(
    ("sim", "expected"),
    [
        ([[0.9, 0.1], [0.2, 0.8]], (True, True, True)),
        ([[0.5, 0.6], [0.1, 0.7]], (True, False, False)),  # audios prefer their captions; caption 0 prefers audio 1
        ([[0.5, 0.1], [0.6, 0.7]], (False, True, False)),  # captions prefer their audio; audio 0 prefers caption 1
        ([[0.1, 0.9], [0.8, 0.2]], (False, False, False)),
        ([[0.5, 0.5], [0.5, 0.5]], (False, False, False)),  # ties fail (strict, as CompA)
        ([[0.9, 0.1, 0.2], [0.1, 0.8, 0.3], [0.2, 0.3, 0.7]], (True, True, True)),
        ([[0.9, 0.1, 0.2], [0.1, 0.5, 0.6], [0.2, 0.3, 0.7]], (True, False, False)),  # caption 1 prefers audio 2
        ([[0.9, 0.1, 0.2], [0.1, 0.8, 0.75], [0.2, 0.3, 0.7]], (False, True, False)),  # audio 2 prefers caption 1
    ],
)
def test_hand_built_blocks(sim, expected):
    assert winoground_scores(np.array(sim)) == expected


def compa_script(s):
    """Scores written as CompA's evaluation/benchmark_eval.py does, with sim_i_j = s(text_i, audio_j)."""
    f = (s[0, 0] > s[1, 0]) and (s[1, 1] > s[0, 1])
    g = (s[0, 0] > s[0, 1]) and (s[1, 1] > s[1, 0])
    return f, g, f and g


def test_matches_compa_reference_and_chance():
    rng = np.random.default_rng(0)
    blocks = [rng.random((2, 2)) for _ in range(20000)]
    for b in blocks[:500]:
        assert winoground_scores(b) == compa_script(b)
    out = compositional_scores(blocks)
    assert out["random_text_score"] == pytest.approx(0.25)
    assert out["random_group_score"] == pytest.approx(1 / 6)
    for name in ("text", "audio", "group"):  # a random scorer lands on the baseline
        assert out[f"{name}_score"] == pytest.approx(out[f"random_{name}_score"], abs=0.01)


def test_same_winner_rates_random_and_composition_blind():
    rng = np.random.default_rng(2)
    out = compositional_scores([rng.random((3, 3)) for _ in range(20000)])
    assert out["random_same_caption_rate"] == pytest.approx(3 * (1 / 3) ** 3)
    assert out["same_caption_rate"] == pytest.approx(out["random_same_caption_rate"], abs=0.01)
    assert out["same_audio_rate"] == pytest.approx(out["random_same_audio_rate"], abs=0.01)
    # Audio blind to order: both audio columns are the same vector plus tiny noise, captions differ by an offset.
    blind = []
    for _ in range(2000):
        caption_offset = rng.normal(size=(2, 1))
        blind.append(caption_offset + 0.01 * rng.normal(size=(2, 2)) + rng.normal())
    out = compositional_scores(blind)
    assert out["same_caption_rate"] > 0.95 and out["random_same_caption_rate"] == 0.5
    assert out["text_score"] < 0.05 < out["random_text_score"]  # below the random baseline, as explained
    assert out["same_audio_rate"] == pytest.approx(0.5, abs=0.05)  # the captions still tell the audios apart


def test_random_baseline_three_pairs():
    b = random_baseline(3)
    assert b["text"] == pytest.approx(1 / 27) and b["audio"] == pytest.approx(1 / 27)
    rng = np.random.default_rng(1)
    hits = np.mean([winoground_scores(rng.random((3, 3)))[2] for _ in range(20000)])
    assert hits == pytest.approx(b["group"], abs=0.006)
    assert 0 < b["group"] < b["text"]


def test_mixed_sizes_average_the_baselines():
    out = compositional_scores([np.eye(2), np.eye(3)])
    assert out["group_score"] == 1.0
    assert out["random_text_score"] == pytest.approx((1 / 4 + 1 / 27) / 2)


def test_load_compa_csv(tmp_path):
    header = "pair_caption,reversed_pair_caption,triplet_caption,pair_file,reversed_pair_file,triplet_file\n"
    rows = "a then b,b then a,a with b,1.wav,2.wav,3.wav\nc then d,d then c,-,4.wav,5.wav,-\n,x,-,6.wav,7.wav,-\n"
    (tmp_path / "order.csv").write_text(header + rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = load_compa_csv(tmp_path / "order.csv")
    assert "skipped 1 rows" in str(caught[0].message)
    assert [len(i.captions) for i in items] == [2, 2]
    assert items[0].audio == [str(tmp_path / "1.wav"), str(tmp_path / "2.wav")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        items = load_compa_csv(tmp_path / "order.csv", include_triplet=True)
    assert [len(i.captions) for i in items] == [3, 2] and items[0].captions[2] == "a with b"
    (tmp_path / "attr.csv").write_text(
        "pair_caption,reversed_pair_caption,pair_file,reversed_pair_file\nx,y,a.wav,b.wav\n"
    )
    assert len(load_compa_csv(tmp_path / "attr.csv", include_triplet=True)[0].audio) == 2
    (tmp_path / "bad.csv").write_text("caption,file\nx,a.wav\n")
    with pytest.raises(ValueError, match="missing CompA columns"):
        load_compa_csv(tmp_path / "bad.csv")


@pytest.mark.parametrize("n", [2, 3])
def test_random_group_baseline_by_enumeration(n):
    """Count every ordering of the n² scores (2×2: 24, 3×3: 362880 orderings) that passes h."""
    import itertools

    if n == 2:
        perms = np.array(list(itertools.permutations(range(4)))).reshape(-1, 2, 2)
    else:  # all orderings of 9 scores, built column by column without a Python loop over 9!
        perms = np.zeros((1, 0), dtype=np.int8)
        for k in range(9):
            perms = np.concatenate([np.insert(perms, p, k, axis=1) for p in range(k + 1)], axis=0)
        perms = perms.reshape(-1, 3, 3)
    passed = sum(winoground_scores(b)[2] for b in perms) if n == 2 else _group_vectorised(perms)
    assert passed / len(perms) == pytest.approx(random_baseline(n)["group"], rel=1e-12)


def _group_vectorised(perms):
    diag = np.diagonal(perms, axis1=1, axis2=2)
    off = ~np.eye(perms.shape[1], dtype=bool)[None]
    f = np.all((diag[:, None, :] > perms) | ~off, axis=(1, 2))
    g = np.all((diag[:, :, None] > perms) | ~off, axis=(1, 2))
    return int((f & g).sum())
