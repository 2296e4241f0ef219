"""DEP-5 license lookup and class-map validation."""

from __future__ import annotations

import json

import pytest

from demo.datasets import DEFAULT_CLASS_MAP, load_class_map
from demo.datasets.licenses import parse_dep5

COPYRIGHT = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: demo

Files: *
Copyright: 2020 Someone
License: GPL-3+

Files: sounds/*.ogg
       extra/*.wav
Copyright: 2021 Recorder
License: CC-BY-3.0
 Long license text that is not part of the name.

Files: sounds/dogs/*
Copyright: 2022 Another
License: CC0-1.0
"""


def test_dep5_last_matching_paragraph_wins() -> None:
    dep5 = parse_dep5(COPYRIGHT)
    assert dep5 is not None
    assert dep5.license("src/main.c") == "GPL-3+"
    assert dep5.license("sounds/cat.ogg") == "CC-BY-3.0"
    assert dep5.license("sounds/deep/cat.ogg") == "CC-BY-3.0"  # '*' crosses '/' in DEP-5
    assert dep5.license("extra/a.wav") == "CC-BY-3.0"
    assert dep5.license("sounds/dogs/bark.ogg") == "CC0-1.0"


def test_non_dep5_copyright_is_not_parsed() -> None:
    assert parse_dep5("This package was debianized by someone.\n\nLicense: MIT\n") is None


def _minimal(tmp_path, **class_fields):
    cls = {"label": "dog barking", "captions": ["a dog"], "sources": [{"package": "p", "files": ["*.wav"]}]}
    cls.update(class_fields)
    return {"packages": {"p": {"root": str(tmp_path), "short": "p", "license": "CC0"}}, "classes": {"dog": cls}}


@pytest.mark.parametrize(
    "change,message",
    [
        ({"kind": "music"}, "kind 'music'"),
        ({"sources": [{"package": "q", "files": ["x"]}]}, "unknown package 'q'"),
        ({"sources": [{"package": "p"}]}, "exactly one of 'files'"),
        ({"sources": [{"package": "p", "render": {"keys": [60], "velocities": [90]}}]}, "no 'soundfont'"),
        ({"sources": [{"package": "p", "files": ["x"], "split": "dev"}]}, "split 'dev'"),
        ({"sources": [{"package": "p", "files": ["x"], "gain": 3}]}, "unknown keys \\['gain'\\]"),
        ({"captions": []}, "at least one caption"),
        ({"captions": ["ok", " "]}, "captions: must be a list of non-empty strings"),
        ({"excluded": [{"package": "p", "file": "x.wav"}]}, "missing 'reason'"),
    ],
)
def test_class_map_errors_name_the_entry(tmp_path, change, message) -> None:
    with pytest.raises(ValueError, match=message):
        load_class_map(_minimal(tmp_path, **change))


def test_class_map_from_file_resolves_relative_roots(tmp_path) -> None:
    raw = _minimal(tmp_path)
    raw["packages"]["p"]["root"] = "audio"
    path = tmp_path / "map.json"
    path.write_text(json.dumps(raw))
    cmap = load_class_map(path)
    assert cmap.packages["p"].root == (tmp_path / "audio").resolve()
    assert cmap.classes["dog"].kind == "event" and cmap.min_clips == 3


def test_shipped_class_map_is_valid_and_reviewed() -> None:
    cmap = load_class_map(DEFAULT_CLASS_MAP)
    kinds = [c.kind for c in cmap.classes.values()]
    assert kinds.count("event") >= 40 and "instrument" in kinds
    for cls in cmap.classes.values():
        assert cls.note, f"{cls.name}: every class records what review found"
        assert len(cls.captions) >= 3, f"{cls.name}: several caption phrasings"
    assert all(ex.reason for cls in cmap.classes.values() for ex in cls.excluded)
    licenses = {"GPL-2", "CC0", "MIT", "GFDL-1.3", "Battle-Tanks-License", "GPL-3+", "CC-BY-SA-3.0"}
    assert {p.license for p in cmap.packages.values()} >= licenses
    speech = [c for c in cmap.classes.values() if c.kind == "speech"]
    assert len(speech) >= 20 and all(len({s.package for s in c.sources}) >= 2 for c in speech)


def _speech_map(tmp_path, tts=None, synthesizer="espeak-ng", **class_fields):
    tts = (
        {"text": "seven", "voices": ["en", "en-us+f2"], "rates": [0.75, 1.0], "pitches": [40, 60]}
        if tts is None
        else tts
    )
    cls = {
        "label": 'a voice saying "seven"',
        "kind": "speech",
        "captions": ["seven"],
        "sources": [{"package": "e", "tts": tts}],
    }
    cls.update(class_fields)
    pkg = {"root": str(tmp_path), "short": "e", "license": "GPL-3+", "synthesizer": synthesizer}
    return {"process": {"min_seconds": 0.5}, "packages": {"e": pkg}, "classes": {"say_seven": cls}}


def test_tts_source_and_class_process_are_parsed(tmp_path) -> None:
    cmap = load_class_map(_speech_map(tmp_path, process={"min_seconds": 0.4}))
    cls = cmap.classes["say_seven"]
    tts = cls.sources[0].tts
    assert tts is not None and tts.text == "seven" and tts.voices == ("en", "en-us+f2")
    assert tts.rates == (0.75, 1.0) and tts.pitches == (40, 60) and tts.max_renders is None
    assert cmap.packages["e"].synthesizer == "espeak-ng"
    assert cls.process is not None and cls.process.min_seconds == 0.4 and cmap.process.min_seconds == 0.5
    assert cls.process.target_lufs == cmap.process.target_lufs  # the rest comes from the class map
    plain = load_class_map(_speech_map(tmp_path, tts={"text": "hi", "voices": ["slt"]}, synthesizer="flite"))
    assert plain.classes["say_seven"].process is None
    assert (
        plain.classes["say_seven"].sources[0].tts.rates == (1.0,)
        and plain.classes["say_seven"].sources[0].tts.pitches == ()
    )


@pytest.mark.parametrize(
    "tts,synthesizer,class_fields,message",
    [
        (None, "say", {}, "synthesizer 'say' must be one of"),
        ({"text": " ", "voices": ["en"]}, "espeak-ng", {}, "'text' must not be empty"),
        ({"text": "seven"}, "espeak-ng", {}, "missing 'voices'"),
        ({"text": "seven", "voices": ["en", "en"]}, "espeak-ng", {}, "each once"),
        ({"text": "seven", "voices": ["en"], "rates": [0]}, "espeak-ng", {}, "speed factors"),
        (
            {"text": "seven", "voices": ["en"], "rates": ["fast"]},
            "espeak-ng",
            {},
            "tts.rates: must be a list of numbers",
        ),
        ({"text": "seven", "voices": ["en"], "pitches": [120]}, "espeak-ng", {}, "outside espeak-ng's range 0-99"),
        ({"text": "seven", "voices": ["slt"], "pitches": [20]}, "flite", {}, "outside flite's range 50-400"),
        ({"text": "seven", "voices": ["en"], "max_renders": 0}, "espeak-ng", {}, "must be a positive integer"),
        ({"text": "seven", "voices": ["en"], "speed": 2}, "espeak-ng", {}, "unknown keys \\['speed'\\]"),
        (None, "espeak-ng", {"process": {"sample_rate": 8000}}, "'sample_rate' is the class map's"),
        (None, "espeak-ng", {"process": {"min_secs": 0.4}}, "say_seven.process"),
    ],
)
def test_tts_errors_name_the_entry(tmp_path, tts, synthesizer, class_fields, message) -> None:
    with pytest.raises(ValueError, match=message):
        load_class_map(_speech_map(tmp_path, tts, synthesizer, **class_fields))


def test_tts_needs_a_synthesizer_package_and_one_kind_of_source(tmp_path) -> None:
    raw = _minimal(tmp_path, sources=[{"package": "p", "tts": {"text": "hi", "voices": ["en"]}}])
    with pytest.raises(ValueError, match="package 'p' has no 'synthesizer'"):
        load_class_map(raw)
    raw = _speech_map(tmp_path)
    raw["classes"]["say_seven"]["sources"][0]["files"] = ["*.wav"]
    with pytest.raises(ValueError, match="exactly one of 'files' \\(globs\\), 'render' \\(notes\\) or 'tts'"):
        load_class_map(raw)
