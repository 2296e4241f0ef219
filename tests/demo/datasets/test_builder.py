"""The dataset builder end to end on a synthetic package tree (no Debian packages needed)."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from clapkit.data.inputs import read_jsonl
from demo.datasets import build_dataset, check_class_map, format_summary, load_class_map
from demo.datasets.cli import main
from tests.demo.datasets.test_cross_source import assert_no_split_leaks

RATE = 16000  # Hz; the test class map writes clips at this rate


def _tone(freq: float, seconds: float, *, lead: float = 0.3, tail: float = 0.3, seed: int = 0) -> np.ndarray:
    """A decaying harmonic tone between stretches of a quiet noise floor, float32 [T]."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * RATE)) / RATE
    body = sum(np.sin(2 * math.pi * freq * k * t) / k for k in (1, 2, 3)) * 0.3 * np.exp(-t)
    floor = lambda s: 1e-4 * rng.standard_normal(round(s * RATE))  # noqa: E731
    return np.concatenate([floor(lead), body, floor(tail)]).astype(np.float32)


def _noise_burst(seed: int, seconds: float, cutoff: float) -> np.ndarray:
    wave = torch.from_numpy(np.random.default_rng(seed).uniform(-0.5, 0.5, round(seconds * RATE)).astype(np.float32))
    return AF.lowpass_biquad(wave, RATE, cutoff).numpy()


def _wav(wave: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _make_rcc(files: dict[str, bytes]) -> bytes:
    """A format-version-2 Qt resource file (the layout of ``rcc --binary``), zlib-compressing every file."""
    tree: dict = {}
    for path, data in files.items():
        node = tree
        *dirs, leaf = path.split("/")
        for d in dirs:
            node = node.setdefault(d, {})
        node[leaf] = data
    order: list[tuple[str, object]] = [("", tree)]  # breadth first: a directory's children are contiguous
    first_child: dict[int, int] = {}
    i = 0
    while i < len(order):
        _, item = order[i]
        if isinstance(item, dict):
            first_child[i] = len(order)
            order.extend(sorted(item.items()))
        i += 1
    names, data_blob, nodes = b"", b"", b""
    for index, (name, item) in enumerate(order):
        name_offset = len(names)
        names += struct.pack(">HI", len(name), 0) + name.encode("utf-16-be")
        if isinstance(item, dict):
            nodes += struct.pack(">iHii", name_offset if index else 0, 2, len(item), first_child[index])
        else:
            packed = struct.pack(">I", len(item)) + zlib.compress(item)
            nodes += struct.pack(">iHhhi", name_offset, 1, 0, 1, len(data_blob))
            data_blob += struct.pack(">I", len(packed)) + packed
        nodes += struct.pack(">q", 0)
    header = 20
    data_offset, names_offset = header, header + len(data_blob)
    tree_offset = names_offset + len(names)
    return b"qres" + struct.pack(">iiii", 2, tree_offset, data_offset, names_offset) + data_blob + names + nodes


COPYRIGHT = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 2024 Nobody
License: GPL-3+

Files: sounds/beep_c.wav
Copyright: 2024 Somebody
License: CC0-1.0
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Two fake packages: loose wav files with a DEP-5 copyright, and a Qt resource archive."""
    files = tmp_path / "pkg_files"
    (files / "sounds").mkdir(parents=True)
    for name, freq in [("beep_a", 330), ("beep_b", 440), ("beep_c", 550), ("beep_bad", 660)]:
        (files / "sounds" / f"{name}.wav").write_bytes(_wav(_tone(freq, 1.0, seed=freq)))
    (files / "sounds" / "beep_copy.wav").write_bytes(_wav(0.5 * _tone(330, 1.0, seed=330)))  # beep_a, quieter
    (files / "sounds" / "blip.wav").write_bytes(_wav(_tone(880, 0.2)))  # 0.2 s: too short
    (files / "sounds" / "beep_broken.wav").write_bytes(b"RIFF not really a wav file")
    (files / "copyright").write_text(COPYRIGHT)
    members = {
        "game/noise/hiss_low.wav": _wav(_noise_burst(1, 1.5, 500)),
        "game/noise/hiss_high.wav": _wav(_noise_burst(2, 1.5, 6000)),
        "game/noise/long.wav": _wav(np.concatenate([_noise_burst(3, 1.2, 2000), _noise_burst(4, 1.3, 3000)])),
        "game/other/lonely.wav": _wav(_tone(200, 1.0)),
    }
    (tmp_path / "pkg_rcc").mkdir()
    (tmp_path / "pkg_rcc" / "res.rcc").write_bytes(_make_rcc(members))
    return tmp_path


def _class_map(tree: Path) -> dict:
    return {
        "name": "toy",
        "process": {"sample_rate": RATE, "min_seconds": 0.5, "target_lufs": -23.0},
        "test_fraction": 0.34,
        "packages": {
            "files-pkg": {
                "root": str(tree / "pkg_files"),
                "short": "fp",
                "license": "GPL-3+",
                "copyright": str(tree / "pkg_files" / "copyright"),
            },
            "rcc-pkg": {"root": str(tree / "pkg_rcc"), "short": "rp", "license": "CC-BY-3.0"},
        },
        "classes": {
            "beep": {
                "label": "beeping",
                "captions": ["a beep", "beeping tones"],
                "note": "synthetic",
                "sources": [{"package": "files-pkg", "files": ["sounds/beep_*.wav", "sounds/blip.wav"]}],
                "excluded": [{"package": "files-pkg", "file": "sounds/beep_bad.wav", "reason": "sounds wrong"}],
            },
            "hiss": {
                "label": "hissing",
                "captions": ["a hiss"],
                "note": "synthetic",
                "sources": [
                    {"package": "rcc-pkg", "rcc": "res.rcc", "files": ["game/noise/hiss_*.wav"]},
                    {
                        "package": "rcc-pkg",
                        "rcc": "res.rcc",
                        "files": ["game/noise/long.wav"],
                        "segments": [[0, 1.2], [1.2, 2.5]],
                        "captions": ["a long hiss"],
                        "attributes": {"take": 2},
                    },
                ],
            },
            "lonely": {
                "label": "humming",
                "captions": ["a hum"],
                "note": "too few clips on purpose",
                "sources": [{"package": "rcc-pkg", "rcc": "res.rcc", "files": ["game/other/*.wav"]}],
            },
        },
    }


def _records(out: Path) -> dict[str, dict]:
    lines = (out / "metadata.jsonl").read_text().splitlines()
    return {rec["audio"]: rec for rec in map(json.loads, lines)}


def test_build_curates_splits_and_describes_every_clip(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = build_dataset(out, load_class_map(_class_map(tree)), progress=False)
    records = _records(out)
    by_class: dict[str, list[dict]] = {}
    for rec in records.values():
        by_class.setdefault(rec["class"], []).append(rec)

    # beep: beep_bad excluded by review, blip too short, beep_copy a duplicate of beep_a.
    assert sorted(Path(r["audio"]).stem for r in by_class["beep"]) == ["fp-beep-a", "fp-beep-b", "fp-beep-c"]
    assert [d["dropped"] for d in result.duplicates] == ["clips/beep/fp-beep-copy.flac"]
    reasons = {s["source"]: s["reason"] for s in result.skipped}
    assert "shorter than min_seconds" in reasons["files-pkg:sounds/blip.wav"]
    assert "cannot decode" in reasons["files-pkg:sounds/beep_broken.wav"]
    assert "lonely" in {d["class"] for d in result.dropped_classes} and "lonely" not in by_class

    # hiss: two files plus two hand-cut segments of long.wav that share one group and split.
    hiss = {Path(r["audio"]).stem: r for r in by_class["hiss"]}
    assert set(hiss) == {"rp-hiss-low", "rp-hiss-high", "rp-long-s1", "rp-long-s2"}
    assert hiss["rp-long-s1"]["group"] == hiss["rp-long-s2"]["group"]
    assert hiss["rp-long-s1"]["split"] == hiss["rp-long-s2"]["split"]
    assert hiss["rp-long-s2"]["segment"] == [1.2, 2.5] and hiss["rp-long-s2"]["attributes"] == {"take": 2}
    assert hiss["rp-long-s1"]["captions"] == ["a long hiss", "a hiss"]
    assert hiss["rp-long-s1"]["source_file"].endswith("res.rcc:/game/noise/long.wav")

    for recs in by_class.values():
        assert {r["split"] for r in recs} == {"train", "test"}
    # Licenses: DEP-5 per file, the package fallback where no copyright file exists.
    lic = {Path(r["audio"]).stem: r["license"] for r in records.values()}
    assert lic["fp-beep-c"] == "CC0-1.0" and lic["fp-beep-a"] == "GPL-3+" and lic["rp-hiss-low"] == "CC-BY-3.0"

    for rec in records.values():
        wave, rate = sf.read(out / rec["audio"], dtype="float32")
        assert rate == RATE and wave.ndim == 1
        assert rec["labels"] == [{"beep": "beeping", "hiss": "hissing"}[rec["class"]]]
        assert abs(len(wave) / RATE - rec["duration"]) < 1e-3 and rec["duration"] >= 0.5
        assert np.abs(wave).max() <= 10 ** (-1 / 20) + 1e-3  # peak ceiling -1 dBFS
        lufs = float(AF.loudness(torch.from_numpy(wave).double().unsqueeze(0), RATE))
        limited = rec["stats"]["gain_db"] < -23.0 - rec["stats"]["loudness_lufs"] - 0.01
        assert limited or abs(lufs + 23.0) < 0.5
    beep_a = next(r for r in by_class["beep"] if r["audio"].endswith("fp-beep-a.flac"))
    assert abs(beep_a["duration"] - 1.0) < 0.06 and abs(beep_a["stats"]["trim_start"] - 0.3) < 0.03

    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips"] == len(records) == 7 and summary["classes"]["hiss"]["packages"] == ["rcc-pkg"]
    assert (out / "index.csv").read_text().startswith("path,class,label,kind,split")
    for split in ("train", "test"):  # per-split listings that the shard writer reads as they are
        inputs = read_jsonl(out / f"{split}.jsonl")
        assert inputs and all(i.error is None and i.fields["split"] == split for i in inputs)
        assert all(Path(i.audio).is_file() and i.fields["captions"] for i in inputs)
    assert "beep" in format_summary(result) and "dropped class lonely" in format_summary(result)


def test_rebuild_reuses_clips_removes_stale_ones_and_keeps_splits(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    raw = _class_map(tree)
    first = build_dataset(out, load_class_map(raw), progress=False)
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "clips").rglob("*.flac")}
    again = build_dataset(out, load_class_map(raw), progress=False)
    assert again.reused == len(first.records)  # dropped duplicates and too-small classes are re-checked
    assert {p: p.stat().st_mtime_ns for p in (out / "clips").rglob("*.flac")} == mtimes
    assert [r.to_json() for r in again.records] == [r.to_json() for r in first.records]

    raw["classes"]["beep"]["captions"] = ["a new phrasing"]  # metadata follows the map without re-encoding
    del raw["classes"]["hiss"]
    third = build_dataset(out, load_class_map(raw), progress=False)
    assert third.reused == 3 and not (out / "clips" / "hiss").exists()
    assert all(r["captions"] == ["a new phrasing"] for r in _records(out).values())

    forced = build_dataset(out, load_class_map(raw), force=True, progress=False)
    assert forced.reused == 0


def test_a_class_from_two_packages_holds_one_out_as_the_cross_split(tree: Path, tmp_path: Path) -> None:
    raw = _class_map(tree)
    # "sound": four beeps from files-pkg (beep_copy is dropped as a duplicate) and two hisses from rcc-pkg.
    raw["classes"]["sound"] = {
        "label": "a sound",
        "captions": ["a sound"],
        "sources": [
            {"package": "files-pkg", "files": ["sounds/beep_a.wav", "sounds/beep_b.wav", "sounds/beep_c.wav"]},
            {"package": "files-pkg", "files": ["sounds/beep_bad.wav", "sounds/beep_copy.wav"]},
            {"package": "rcc-pkg", "rcc": "res.rcc", "files": ["game/noise/hiss_*.wav"]},
        ],
    }
    out = tmp_path / "out"
    result = build_dataset(out, load_class_map(raw), progress=False)
    # Holding files-pkg out would leave 2 clips (< min_clips=3): only rcc-pkg can go.
    assert result.counts()["sound"] == {"train": 3, "test": 1, "cross": 2}
    assert result.cross_sources["sound"] == {"package": "rcc-pkg", "reason": "chosen by hash among ['rcc-pkg']"}
    records = list(_records(out).values())
    assert assert_no_split_leaks(records) == {"sound": "rcc-pkg"}
    cross = [json.loads(line) for line in (out / "cross.jsonl").read_text().splitlines()]
    assert sorted(Path(r["audio"]).stem for r in cross) == ["rp-hiss-high", "rp-hiss-low"]
    assert all(r["split"] == "cross" and r["class"] == "sound" for r in cross)
    with open(out / "index.csv", newline="") as f:
        index = {row["path"]: row["split"] for row in csv.DictReader(f)}
    assert index == {r["audio"]: r["split"] for r in records}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cross"] == 2 and summary["cross_source_classes"] == 1
    assert summary["classes"]["sound"]["cross_source_package"] == "rcc-pkg"
    assert summary["classes"]["beep"]["cross_source_reason"] == "one package (files-pkg)"
    assert summary["classes"]["beep"]["cross_source_package"] is None
    rows = {line.split()[0]: line.split() for line in format_summary(result).splitlines()}
    assert rows["class"][2:] == ["train", "test", "cross", "total", "held", "out"]
    assert rows["sound"][2:] == ["3", "1", "2", "6", "rcc-pkg"] and rows["beep"][-1] == "-"
    assert "1 with a held-out package" in format_summary(result)
    # Single-package classes split as before the cross split existed.
    assert {r["split"] for r in records if r["class"] in ("beep", "hiss")} == {"train", "test"}

    raw["classes"]["sound"]["cross_source_package"] = False
    opted_out = build_dataset(out, load_class_map(raw), progress=False)
    assert opted_out.counts()["sound"]["cross"] == 0 and "opted out" in opted_out.cross_sources["sound"]["reason"]
    assert (out / "cross.jsonl").read_text() == ""
    raw["classes"]["sound"]["cross_source_package"] = "files-pkg"  # would leave rcc-pkg's 2 clips only
    pinned = build_dataset(out, load_class_map(raw), progress=False)
    assert pinned.cross_sources["sound"]["package"] is None
    assert "holding out files-pkg leaves 2 clips" in pinned.cross_sources["sound"]["reason"]


def test_missing_package_raises_with_the_install_command(tree: Path, tmp_path: Path) -> None:
    raw = _class_map(tree)
    raw["packages"]["rcc-pkg"]["root"] = str(tmp_path / "not-installed")
    with pytest.raises(FileNotFoundError, match="apt-get install rcc-pkg"):
        build_dataset(tmp_path / "out", load_class_map(raw), progress=False)
    result = build_dataset(tmp_path / "out", load_class_map(raw), skip_missing=True, progress=False)
    assert result.missing_packages == ["rcc-pkg"] and set(result.counts()) == {"beep"}


def test_check_reports_bad_globs_and_stale_exclusions(tree: Path) -> None:
    raw = _class_map(tree)
    raw["classes"]["beep"]["sources"].append({"package": "files-pkg", "files": ["sounds/typo_*.wav"]})
    raw["classes"]["beep"]["excluded"].append({"package": "files-pkg", "file": "sounds/gone.wav", "reason": "x"})
    report = check_class_map(load_class_map(raw))
    assert report["planned"]["hiss"] == 4 and report["planned"]["beep"] == 6
    problems = " ".join(p["reason"] for p in report["problems"])
    assert "sounds/typo_*.wav" in problems and "excluded file not found" in problems


def test_check_reports_audio_claimed_by_two_classes(tree: Path) -> None:
    raw = _class_map(tree)
    # beep_a.wav under its own name, and hiss_low's bytes reached through a second class.
    raw["classes"]["hiss"]["sources"].append({"package": "files-pkg", "files": ["sounds/beep_a.wav"]})
    report = check_class_map(load_class_map(raw))
    shared = [p for p in report["problems"] if "same audio" in p["reason"]]
    assert len(shared) == 1 and shared[0]["class"] == "beep"
    assert "classes beep, hiss" in shared[0]["reason"] and "sounds/beep_a.wav" in shared[0]["reason"]
    # A segment of a recording is not the whole recording: different cuts of one file may take two labels.
    raw = _class_map(tree)
    raw["classes"]["beep"]["sources"].append(
        {"package": "rcc-pkg", "rcc": "res.rcc", "files": ["game/noise/long.wav"], "segments": [[0, 0.6]]}
    )
    assert not [p for p in check_class_map(load_class_map(raw))["problems"] if "same audio" in p["reason"]]


def test_cli_builds_with_a_class_map(tree: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "map.json"
    path.write_text(json.dumps(_class_map(tree)))
    out = tmp_path / "cli-out"
    assert main(["build", "debian-sounds", "--class-map", str(path), "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "hiss" in text and "wrote 7 clips" in text
    assert main(["build", "debian-sounds", "--class-map", str(tmp_path / "nope.json"), "--out", str(out)]) == 2


def test_cli_lists_the_datasets(capsys) -> None:
    assert main(["list"]) == 0
    assert capsys.readouterr().out.split() == ["debian-sounds"]


def test_a_class_can_keep_shorter_clips_than_the_class_map(tree: Path, tmp_path: Path) -> None:
    for i, freq in enumerate((300, 500, 700)):
        (tree / "pkg_files" / "sounds" / f"word_{i}.wav").write_bytes(_wav(_tone(freq, 0.42, lead=0.1, tail=0.1)))
    raw = _class_map(tree)
    word = {
        "label": "a word",
        "captions": ["a word"],
        "sources": [{"package": "files-pkg", "files": ["sounds/word_*.wav"]}],
    }
    raw["classes"] = {"word": word}
    plain = build_dataset(tmp_path / "plain", load_class_map(raw), progress=False)
    assert plain.records == [] and plain.dropped_classes[0]["class"] == "word"
    assert all("shorter than min_seconds=0.5" in s["reason"] for s in plain.skipped)
    word["process"] = {"min_seconds": 0.4}
    kept = build_dataset(tmp_path / "kept", load_class_map(raw), progress=False)
    assert len(kept.records) == 3 and all(0.4 <= r.duration < 0.5 for r in kept.records), [
        r.duration for r in kept.records
    ]


CP = shutil.which("cp") or "/bin/cp"  # resolved before the tests empty PATH
FAKE_ESPEAK = """#!/bin/sh
if [ "$1" = "--version" ]; then echo "eSpeak NG text-to-speech: {version}"; exit 0; fi
while [ $# -gt 0 ]; do
  if [ "$1" = "-w" ]; then {cp} {wav} "$2"; fi
  shift
done
"""


def _fake_espeak(folder: Path, version: str) -> None:
    (folder / "said.wav").write_bytes(_wav(_tone(220, 0.8)))
    program = folder / "espeak-ng"
    program.write_text(FAKE_ESPEAK.format(version=version, cp=CP, wav=folder / "said.wav"))
    program.chmod(0o755)


def test_tts_sources_build_one_group_per_voice(tree: Path, tmp_path: Path, monkeypatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))  # the fake program below, nothing else
    raw = _class_map(tree)
    raw["render_captions"] = {"speech": ['"{text}" spoken {speed}']}
    raw["packages"]["tts-pkg"] = {"root": str(tree), "short": "tts", "license": "GPL-3+", "synthesizer": "espeak-ng"}
    tts = {"text": "seven", "voices": ["v1", "v2", "v3"], "rates": [0.6, 1.0, 1.3], "pitches": [40], "max_renders": 7}
    raw["classes"] = {
        "seven": {
            "label": "seven",
            "kind": "speech",
            "captions": ["a voice saying seven"],
            "sources": [{"package": "tts-pkg", "tts": tts}],
        }
    }
    with pytest.raises(FileNotFoundError, match="apt-get install tts-pkg"):  # no espeak-ng on PATH
        build_dataset(tmp_path / "out", load_class_map(raw), progress=False)
    _fake_espeak(bin_dir, "1.0")
    result = build_dataset(tmp_path / "out", load_class_map(raw), progress=False)
    assert len(result.records) == 7 and result.duplicates == []  # identical audio: renders are not de-duplicated
    assert {r.group for r in result.records} == {f"tts-pkg:{v}:seven" for v in ("v1", "v2", "v3")}
    assert {r.split for r in result.records} == {"train", "test"}
    for rec in result.records:
        assert rec.attributes["text"] == "seven" and rec.attributes["voice_pitch"] == 40 and rec.license == "GPL-3+"
        assert f'"seven" spoken {rec.attributes["speed"]}' in rec.captions and "a voice saying seven" in rec.captions
        assert rec.source_file == str(bin_dir / "espeak-ng")
    assert build_dataset(tmp_path / "out", load_class_map(raw), progress=False).reused == 7
    _fake_espeak(bin_dir, "2.0")  # another program version: every render is made again
    assert build_dataset(tmp_path / "out", load_class_map(raw), progress=False).reused == 0


def test_a_soundfont_package_without_its_soundfont_file_is_missing(tree: Path, tmp_path: Path) -> None:
    raw = _class_map(tree)
    raw["packages"]["sf-pkg"] = {"root": str(tree), "short": "sf", "license": "MIT", "soundfont": "absent.sf2"}
    render = {"program": 0, "keys": [60], "velocities": [90]}
    raw["classes"]["piano"] = {
        "label": "piano",
        "captions": ["a piano"],
        "sources": [{"package": "sf-pkg", "render": render}],
    }
    cmap = load_class_map(raw)
    assert cmap.packages["files-pkg"].installed() and not cmap.packages["sf-pkg"].installed()  # root exists, file not
    with pytest.raises(FileNotFoundError, match="apt-get install sf-pkg"):
        build_dataset(tmp_path / "out", cmap, progress=False)


def test_a_patch_package_needs_its_configuration_and_timidity(tree: Path, tmp_path: Path, monkeypatch) -> None:
    raw = _class_map(tree)
    raw["packages"]["pat-pkg"] = {"root": str(tree), "short": "pat", "license": "GPL-2+", "patches": "absent.cfg"}
    raw["classes"]["piano"] = {
        "label": "piano",
        "captions": ["a piano"],
        "sources": [{"package": "pat-pkg", "render": {"program": 0, "keys": [60], "velocities": [90]}}],
    }
    assert not load_class_map(raw).packages["pat-pkg"].installed()  # root exists, configuration not
    (tree / "patches.cfg").write_text("bank 0\n0 piano.pat\n")
    raw["packages"]["pat-pkg"]["patches"] = "patches.cfg"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))  # no timidity: the patches cannot be played
    cmap = load_class_map(raw)
    assert not cmap.packages["pat-pkg"].installed()
    with pytest.raises(FileNotFoundError, match=r"apt-get install pat-pkg timidity`"):
        build_dataset(tmp_path / "out", cmap, progress=False)
