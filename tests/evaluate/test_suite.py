"""The side-by-side comparison table and the per-class CSV of the evaluation suite."""

from __future__ import annotations

import csv

import pytest

from clapkit.evaluate.suite import comparison_rows, format_comparison, save_per_class_csv


def _zeroshot(top1: float, per_class: dict[str, float], chance: float) -> dict:
    mean = sum(per_class.values()) / len(per_class)
    return {"top1": top1, "mean_class_accuracy": mean, "per_class": per_class, "chance_top1": chance}


RESULTS = {
    "infonce": {
        "zeroshot": _zeroshot(0.75, {"dog": 1.0, "cat": 0.5}, 0.25),
        "zeroshot_cross_source": _zeroshot(0.2, {"dog": 0.0, "cat": 0.5}, 0.25),
    },
    "hardneg": {
        "zeroshot": _zeroshot(0.5, {"dog": 0.5, "cat": 0.5}, 0.25),
        "zeroshot_cross_source": _zeroshot(0.6, {"dog": 1.0}, 0.25),
    },
}


def test_cross_source_rows_sit_next_to_the_in_source_ones() -> None:
    rows = {label: (chance, values) for label, chance, values in comparison_rows(RESULTS)}
    assert rows["zero-shot top-1"] == (0.25, [0.75, 0.5])
    assert rows["zero-shot top-1, cross-source"] == (0.25, [0.2, 0.6])
    assert rows["zero-shot class-mean, cross-source"] == (0.25, [0.25, 1.0])
    labels = [label for label, _, _ in comparison_rows(RESULTS)]
    assert labels.index("zero-shot top-1, cross-source") == labels.index("zero-shot class-mean top-1") + 1
    in_source_only = {name: {"zeroshot": r["zeroshot"]} for name, r in RESULTS.items()}
    assert "cross-source" not in format_comparison(in_source_only)  # rows without results are left out
    table = {line[:34].strip(): line[34:].split() for line in format_comparison(RESULTS).splitlines()[2:]}
    assert table["zero-shot top-1, cross-source"] == ["25.0", "20.0", "60.0"]
    assert table["zero-shot class-mean, cross-source"] == ["25.0", "25.0", "100.0"]


def test_per_class_csv_has_the_described_columns_then_one_per_model(tmp_path) -> None:
    classes = {"dog": {"class": "dog", "package": "a", "clips": 2}, "cat": {"class": "cat", "package": "b", "clips": 1}}
    path = save_per_class_csv(RESULTS, tmp_path / "per_class.csv", key="zeroshot_cross_source", classes=classes)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["class", "package", "clips", "infonce", "hardneg"],
        ["dog", "a", "2", "0.0000", "1.0000"],
        ["cat", "b", "1", "0.5000", ""],  # hardneg has no cross-source result for cat
    ]
    with pytest.raises(ValueError, match=r"columns \['infonce'\] are also model names"):
        save_per_class_csv(RESULTS, tmp_path / "x.csv", key="zeroshot", classes={"dog": {"infonce": 1}})


def test_evaluate_model_matches_the_per_task_functions_and_embeds_each_file_once(tmp_path, tiny_model) -> None:
    import numpy as np
    import soundfile as sf

    from clapkit.evaluate.compositional import CompositionalItem, evaluate_compositional
    from clapkit.evaluate.retrieval import RetrievalSet, evaluate_retrieval
    from clapkit.evaluate.suite import EvalSets, evaluate_model
    from clapkit.evaluate.zeroshot import LabelledAudio, evaluate_zeroshot
    from tests.conftest import TINY_RATE, tone

    paths = []
    for i in range(6):
        path = tmp_path / f"c{i}.wav"
        sf.write(path, tone(300 + 200 * i, 0.8, TINY_RATE), TINY_RATE)
        paths.append(str(path))
    zeroshot = LabelledAudio(paths, np.array([0, 1, 0, 1, 0, 1]), ["low tone", "high tone"])
    retrieval = RetrievalSet(paths[:4], [f"tone {i}" for i in range(4)], np.arange(4))
    items = [CompositionalItem([f"a then b {i}", f"b then a {i}"], [paths[i], paths[i + 1]]) for i in (0, 2)]
    sets = EvalSets(zeroshot=zeroshot, retrieval=retrieval, compositional={"compa_order": items})

    calls: list[int] = []
    embed = tiny_model.embed_audio

    def counting(inputs, **kwargs):
        calls.append(len(inputs))
        return embed(inputs, **kwargs)

    tiny_model.embed_audio = counting
    try:
        got = evaluate_model(tiny_model, sets)
    finally:
        del tiny_model.embed_audio
    assert sum(calls) == 6  # three sets over six files: each embedded once
    want_zs = evaluate_zeroshot(tiny_model, zeroshot)
    assert got["zeroshot"]["top1"] == pytest.approx(want_zs["top1"])
    assert got["zeroshot"]["chance_top1"] == 0.5 and len(got["zeroshot"]["predictions"]) == 6
    want_rt = evaluate_retrieval(tiny_model, retrieval)
    for key, value in want_rt.items():
        assert got["retrieval"][key] == pytest.approx(value), key
    assert got["retrieval"]["chance_text_to_audio_R@1"] == pytest.approx(0.25)
    want_co = evaluate_compositional(tiny_model, items)
    assert got["compa_order"] == pytest.approx(want_co)
