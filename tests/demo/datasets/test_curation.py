"""Trimming, DC removal, loudness, segments, duplicates and splits on seeded synthetic audio."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torchaudio.functional as AF

from demo.datasets.classmap import load_class_map
from demo.datasets.curation import (
    ProcessConfig,
    assign_splits,
    find_duplicates,
    normalize_loudness,
    plan_segments,
    process_clip,
    remove_dc,
    signature,
    trim_silence,
)

RATE = 16000  # Hz


def tone(freq: float, seconds: float, amp: float = 0.5) -> torch.Tensor:
    t = torch.arange(round(seconds * RATE)) / RATE
    return amp * torch.sin(2 * math.pi * freq * t)


def padded(wave: torch.Tensor, before: float, after: float, floor: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    pad = lambda s: floor * torch.randn(round(s * RATE), generator=gen)  # noqa: E731
    return torch.cat([pad(before), wave, pad(after)])


def test_trim_finds_the_sound_between_silences() -> None:
    wave = padded(tone(440, 1.0), 0.5, 0.3, floor=1e-4)  # a -74 dB noise floor around a -9 dB tone
    start, end = trim_silence(wave, RATE, top_db=50, frame_seconds=0.02)
    assert abs(start / RATE - 0.5) <= 0.02 and abs(end / RATE - 1.5) <= 0.02


def test_trim_of_digital_silence_is_empty_and_top_db_decides_what_is_silence() -> None:
    assert trim_silence(torch.zeros(RATE), RATE, 50) == (0, 0)
    quiet_then_loud = torch.cat([tone(440, 0.5, amp=0.005), tone(440, 0.5, amp=0.5)])  # 40 dB apart
    assert trim_silence(quiet_then_loud, RATE, top_db=50)[0] == 0
    assert abs(trim_silence(quiet_then_loud, RATE, top_db=30)[0] / RATE - 0.5) <= 0.02


def test_remove_dc_takes_out_an_offset() -> None:
    wave = tone(440, 1.0) + 0.25
    clean = remove_dc(wave, RATE, highpass_hz=20.0)
    assert abs(float(clean.mean())) < 1e-3
    assert abs(float(clean.std()) - float(tone(440, 1.0).std())) < 0.02


def test_loudness_normalisation_reaches_the_target() -> None:
    gen = torch.Generator().manual_seed(1)
    noise = 0.01 * torch.randn(2 * RATE, generator=gen)
    out, stats = normalize_loudness(noise, RATE, target_lufs=-23.0, peak_dbfs=-1.0)
    measured = float(AF.loudness(out.unsqueeze(0).double(), RATE))
    assert abs(measured + 23.0) < 0.1
    assert abs(stats["gain_db"] - (-23.0 - stats["loudness_lufs"])) < 0.01


def test_peak_ceiling_wins_over_the_loudness_target() -> None:
    clicks = torch.zeros(RATE)
    clicks[::4000] = 0.1  # sparse clicks: very low loudness, so the target gain would clip them
    out, stats = normalize_loudness(clicks, RATE, target_lufs=-10.0, peak_dbfs=-1.0)
    assert abs(20 * math.log10(float(out.abs().max())) + 1.0) < 1e-3
    assert stats["gain_db"] < -10.0 - stats["loudness_lufs"]


def test_process_clip_trims_caps_and_rejects_with_reasons() -> None:
    cfg = ProcessConfig(sample_rate=RATE, min_seconds=0.5, max_seconds=1.5, target_lufs=-23.0)
    clip, stats = process_clip(padded(tone(440, 1.0), 0.4, 0.4, floor=1e-4) + 0.3, cfg)  # offset on the whole file
    assert abs(clip.shape[0] / RATE - 1.0) <= 0.05 and abs(stats["trim_start"] - 0.4) <= 0.03  # frames of 20 ms
    assert abs(float(clip.mean())) < 0.01  # the 0.3 DC offset is gone
    long_clip, _ = process_clip(tone(440, 4.0), cfg)
    assert long_clip.shape[0] == round(1.5 * RATE)
    with pytest.raises(ValueError, match="shorter than min_seconds"):
        process_clip(padded(tone(440, 0.3), 0.5, 0.5), cfg)
    with pytest.raises(ValueError, match="silent"):
        process_clip(torch.zeros(RATE), cfg)


def test_plan_segments() -> None:
    assert plan_segments(3.0) == [None]
    assert plan_segments(3.0, segments=[[0, 1.2], [1.2, 9]]) == [(0.0, 1.2), (1.2, 3.0)]
    assert plan_segments(12.3, chunk_seconds=4.1) == [(0.0, 4.1), (4.1, 8.2), (8.2, 12.3)]
    assert plan_segments(5.0, chunk_seconds=3.5) == [(0.0, 5.0)]  # a 1.5 s rest joins the only chunk
    with pytest.raises(ValueError, match="start < end"):
        plan_segments(3.0, segments=[[2, 1]])
    with pytest.raises(ValueError, match="starts after the end"):
        plan_segments(3.0, segments=[[4, 5]])


def test_duplicates_are_found_across_gain_and_noise_but_not_across_sounds() -> None:
    gen = torch.Generator().manual_seed(2)
    a = tone(440, 1.0) * torch.linspace(1, 0, RATE)  # a decaying tone
    copy = 0.3 * a + 1e-4 * torch.randn(RATE, generator=gen)  # the same sound, quieter, re-encoded
    other = tone(660, 1.0) * torch.linspace(1, 0, RATE)
    later = torch.cat([torch.zeros(RATE // 4), a[: 3 * RATE // 4]])  # same sound, shifted: not a copy
    waves = {"a": a, "copy": copy, "other": other, "later": later}
    items = [(name, 1.0, signature(w, RATE)) for name, w in waves.items()]
    assert find_duplicates(items) == [("a", "copy", pytest.approx(1.0, abs=0.01))]
    assert find_duplicates([("a", 1.0, items[0][2]), ("b", 2.0, items[1][2])]) == []  # lengths differ


def test_splits_are_deterministic_order_free_and_cover_both_sides() -> None:
    groups = [f"rec{i}" for i in range(8)]
    first = assign_splits(groups, 0.25, salt="dog")
    assert first == assign_splits(list(reversed(groups)) + groups[:2], 0.25, salt="dog")
    assert sorted(first.values()).count("test") == 2
    assert any(assign_splits(groups, 0.25, salt=s) != first for s in ("cat", "cow", "pig"))  # per-class order
    for n in (2, 3, 4, 5):
        splits = assign_splits(groups[:n], 0.25, salt="x")
        assert list(splits.values()).count("test") >= 1 and "train" in splits.values()


def test_a_large_recording_does_not_take_over_the_test_split() -> None:
    groups = ["loops"] * 3 + ["large", "small"]  # three clips cut from one recording, two single clips
    for salt in ("fire", "train", "a", "b", "c", "d"):
        splits = assign_splits(groups, 0.25, salt=salt)
        assert splits["loops"] == "train" and sorted(splits.values()).count("test") == 1
    assert assign_splits(["big", "big", "big", "one"], 0.25, salt="x") == {"big": "train", "one": "test"}


def test_fixed_splits_are_honoured_and_impossible_ones_rejected() -> None:
    splits = assign_splits(["a", "b", "c", "d"], 0.25, salt="k", fixed={"c": "test"})
    assert splits["c"] == "test" and list(splits.values()).count("test") == 1
    with pytest.raises(ValueError, match="at least 2"):
        assign_splits(["only"], 0.25, salt="k")
    with pytest.raises(ValueError, match="no train"):
        assign_splits(["a", "b"], 0.25, salt="k", fixed={"a": "test", "b": "test"})
    with pytest.raises(ValueError, match="'train' or 'test'"):
        assign_splits(["a", "b"], 0.25, salt="k", fixed={"a": "dev"})


def test_class_map_process_settings_are_strict(tmp_path) -> None:
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"process": {"sample_rate": 16000, "loudness": -23}, "packages": {}, "classes": {}}))
    with pytest.raises(ValueError, match=r"map.json: process: unknown keys \['loudness'\]"):
        load_class_map(path)
    with pytest.raises(ValueError, match="class map: process: .*sample_rate"):
        load_class_map({"process": {"sample_rate": "16 kHz"}, "packages": {}, "classes": {}})
    cfg = load_class_map({"process": {"sample_rate": 16000, "max_seconds": 5}, "packages": {}, "classes": {}}).process
    assert cfg == ProcessConfig(sample_rate=16000, max_seconds=5.0)
