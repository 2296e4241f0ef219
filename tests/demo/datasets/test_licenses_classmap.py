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
    assert {p.license for p in cmap.packages.values()} >= {"GPL-2", "CC0", "MIT", "GFDL-1.3", "Battle-Tanks-License"}
