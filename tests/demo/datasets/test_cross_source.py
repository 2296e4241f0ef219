"""The cross-source split: one package of a multi-package class held out entirely, and the leak checks."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from demo.datasets import class_map_fingerprint, load_class_map
from demo.datasets.curation import assign_source_splits, assign_splits


def assert_no_split_leaks(
    records: Iterable[Mapping[str, Any]], sources: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Fail if, within a class, a source is in the cross split and in train or test, or a recording group is in
    two splits; ``class → held-out source`` of the classes with a cross split.

    Args:
        records: Clip records with ``class``, ``split``, ``source_package`` and ``group``.
        sources: ``package → source`` for packages that share samples with another (``PackageSpec.source``);
            a package not in it is a source of its own.
    """
    sources = sources or {}
    packages: dict[tuple[str, str], set[str]] = defaultdict(set)
    groups: dict[tuple[str, str], set[str]] = defaultdict(set)
    for rec in records:
        assert rec["split"] in ("train", "test", "cross"), rec
        packages[rec["class"], rec["split"]].add(sources.get(rec["source_package"], rec["source_package"]))
        groups[rec["class"], rec["group"]].add(rec["split"])
    for (cls, group), splits in groups.items():
        assert len(splits) == 1, f"{cls}: recording group {group} is in {sorted(splits)}"
    held_out = {}
    for (cls, split), names in packages.items():
        if split != "cross":
            continue
        assert len(names) == 1, f"{cls}: cross split from several sources {sorted(names)}"
        leaked = names & (packages.get((cls, "train"), set()) | packages.get((cls, "test"), set()))
        assert not leaked, f"{cls}: source {sorted(leaked)} in cross and in train/test"
        assert packages.get((cls, "train")) and packages.get((cls, "test")), f"{cls}: cross without train + test"
        held_out[cls] = next(iter(names))
    return held_out


def _clips(sizes: Mapping[str, int]) -> tuple[list[str], list[str]]:
    """``package → recordings`` as parallel per-clip lists, one clip per recording group."""
    packages = [p for p, n in sizes.items() for _ in range(n)]
    groups = [f"{p}:rec{i}" for p, n in sizes.items() for i in range(n)]
    return packages, groups


def _as_records(name: str, packages: list[str], groups: list[str], splits: dict[str, str]) -> list[dict[str, str]]:
    return [{"class": name, "split": splits[g], "source_package": p, "group": g} for p, g in zip(packages, groups)]


def test_held_out_package_is_the_first_eligible_by_hash_and_independent_of_order() -> None:
    sizes = {"pkg-a": 4, "pkg-b": 5, "pkg-c": 3}
    packages, groups = _clips(sizes)
    chosen = set()
    for name in ("dog", "cat", "cow", "pig", "owl", "frog", "duck", "bell"):
        splits, held, reason = assign_source_splits(packages, groups, 0.25, salt=name, min_clips=3)
        expected = min(sizes, key=lambda p: hashlib.sha1(f"{name}\0{p}".encode()).hexdigest())
        assert held == expected and reason == "chosen by hash among ['pkg-a', 'pkg-b', 'pkg-c']"
        again = assign_source_splits(packages[::-1], groups[::-1], 0.25, salt=name, min_clips=3)
        assert again == (splits, held, reason)
        assert {g for g, s in splits.items() if s == "cross"} == {g for p, g in zip(packages, groups) if p == held}
        # The rest is the in-source train/test split of the remaining packages' groups.
        rest = [g for p, g in zip(packages, groups) if p != held]
        assert {g: s for g, s in splits.items() if s != "cross"} == assign_splits(rest, 0.25, salt=name)
        assert assert_no_split_leaks(_as_records(name, packages, groups, splits)) == {name: held}
        chosen.add(held)
    assert len(chosen) > 1  # the choice is per class, not one package for all


def test_only_packages_whose_removal_leaves_enough_clips_are_held_out() -> None:
    packages, groups = _clips({"big": 6, "small": 1})
    for name in ("dog", "cat", "cow", "pig"):
        _, held, reason = assign_source_splits(packages, groups, 0.25, salt=name, min_clips=3)
        assert held == "small" and reason == "chosen by hash among ['small']"
    # Two recordings (one group each) are too few for min_clips=3 once the other package is gone.
    packages, groups = _clips({"a": 2, "b": 2})
    splits, held, reason = assign_source_splits(packages, groups, 0.25, salt="dog", min_clips=3)
    assert held is None and "leaves 2 clips in 2 recording groups" in reason and "none held out" in reason
    assert splits == assign_splits(groups, 0.25, salt="dog") and "cross" not in splits.values()
    # Five clips cut from one recording: holding their package out would leave two clips.
    packages = ["loops"] * 5 + ["one", "two"]
    groups = ["loops:long"] * 5 + ["one:a", "two:b"]
    _, held, _ = assign_source_splits(packages, groups, 0.25, salt="fire", min_clips=3)
    assert held in ("one", "two")


def test_single_package_classes_keep_their_old_split() -> None:
    groups = [f"pkg:rec{i}" for i in range(7)]
    for name in ("dog", "violin", "fire"):
        splits, held, reason = assign_source_splits(["pkg"] * 7, groups, 0.25, salt=name, min_clips=3)
        assert splits == assign_splits(groups, 0.25, salt=name) and held is None and reason == "one package (pkg)"


def test_a_pinned_package_is_held_out_and_false_opts_out() -> None:
    packages, groups = _clips({"pkg-a": 4, "pkg-b": 4})
    for pin in ("pkg-a", "pkg-b"):
        splits, held, reason = assign_source_splits(packages, groups, 0.25, salt="dog", min_clips=3, hold_out=pin)
        assert held == pin and reason == "pinned in the class map"
        assert assert_no_split_leaks(_as_records("dog", packages, groups, splits)) == {"dog": pin}
    splits, held, reason = assign_source_splits(packages, groups, 0.25, salt="dog", min_clips=3, hold_out=False)
    assert held is None and "opted out" in reason and splits == assign_splits(groups, 0.25, salt="dog")
    # A pin that would leave too little is not honoured, and the summary says why.
    packages, groups = _clips({"big": 6, "small": 1})
    _, held, reason = assign_source_splits(packages, groups, 0.25, salt="dog", min_clips=3, hold_out="big")
    assert held is None and "holding out big leaves 1 clips in 1 recording groups" in reason
    _, held, reason = assign_source_splits(packages, groups, 0.25, salt="dog", min_clips=3, hold_out="gone")
    assert held is None and "pinned package gone has no clips" in reason


def test_fixed_splits_keep_a_package_from_automatic_hold_out() -> None:
    packages, groups = _clips({"pkg-a": 4, "pkg-b": 4})
    for name in ("dog", "cat", "cow", "pig"):
        for keep in ("pkg-a", "pkg-b"):
            fixed = {f"{keep}:rec0": "test"}
            splits, held, _ = assign_source_splits(packages, groups, 0.25, salt=name, min_clips=3, fixed=fixed)
            assert held != keep and splits[f"{keep}:rec0"] == "test"


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="dog: recording group 'g' has clips from a and b"):
        assign_source_splits(["a", "b", "a"], ["g", "g", "h"], 0.25, salt="dog", min_clips=1)
    with pytest.raises(ValueError, match="dog: 2 packages for 3 groups"):
        assign_source_splits(["a", "b"], ["g", "h", "i"], 0.25, salt="dog", min_clips=1)


def test_leak_check_catches_a_package_in_train_and_cross() -> None:
    records = [
        {"class": "dog", "split": "train", "source_package": "a", "group": "a:1"},
        {"class": "dog", "split": "test", "source_package": "a", "group": "a:2"},
        {"class": "dog", "split": "cross", "source_package": "b", "group": "b:1"},
    ]
    assert assert_no_split_leaks(records) == {"dog": "b"}
    with pytest.raises(AssertionError, match="in cross and in train/test"):
        assert_no_split_leaks([*records, {"class": "dog", "split": "train", "source_package": "b", "group": "b:2"}])
    with pytest.raises(AssertionError, match="recording group a:1 is in"):
        assert_no_split_leaks([*records, {"class": "dog", "split": "test", "source_package": "a", "group": "a:1"}])


def _class_map(**dog: Any) -> dict:
    source = {"files": ["*.wav"]}
    return {
        "packages": {name: {"root": ".", "short": name, "license": "CC0-1.0"} for name in ("pkg-a", "pkg-b")},
        "classes": {
            "dog": {
                "label": "dog",
                "captions": ["a dog"],
                "sources": [{"package": "pkg-a", **source}, {"package": "pkg-b", **source}],
                **dog,
            },
            "cat": {"label": "cat", "captions": ["a cat"], "sources": [{"package": "pkg-a", **source}]},
        },
    }


def test_class_map_cross_source_package_is_validated() -> None:
    assert load_class_map(_class_map()).classes["dog"].cross_source is True
    assert load_class_map(_class_map(cross_source_package="pkg-b")).classes["dog"].cross_source == "pkg-b"
    assert load_class_map(_class_map(cross_source_package=False)).classes["dog"].cross_source is False
    assert load_class_map(_class_map(cross_source_package=None)).classes["dog"].cross_source is False
    with pytest.raises(ValueError, match=r"classes.dog: cross_source_package 'pkg-c' is not a package .*'pkg-a'"):
        load_class_map(_class_map(cross_source_package="pkg-c"))
    with pytest.raises(ValueError, match="classes.dog: cross_source_package must be a package name or false"):
        load_class_map(_class_map(cross_source_package=1))
    raw = _class_map()
    raw["classes"]["cat"]["cross_source_package"] = "pkg-a"
    with pytest.raises(ValueError, match="classes.cat: cross_source_package 'pkg-a' names the class's only package"):
        load_class_map(raw)


def test_packages_sharing_samples_are_one_source() -> None:
    raw = _class_map()
    raw["packages"]["pkg-c"] = {"root": ".", "short": "c", "license": "CC0-1.0", "shares_samples_with": "pkg-b"}
    cmap = load_class_map(raw)
    assert [cmap.packages[n].source for n in ("pkg-a", "pkg-b", "pkg-c")] == ["pkg-a", "pkg-b", "pkg-b"]
    # What the builder hands the split: pkg-c's clips count as pkg-b's, so both are held out together or neither.
    packages, groups = _clips({"pkg-a": 4, "pkg-b": 2, "pkg-c": 2})
    sources = [cmap.packages[p].source for p in packages]
    splits, held, _ = assign_source_splits(sources, groups, 0.25, salt="dog", min_clips=3, hold_out="pkg-b")
    assert held == "pkg-b" and [splits[g] for g in groups[4:]] == ["cross"] * 4
    records = _as_records("dog", packages, groups, splits)
    assert assert_no_split_leaks(records, {"pkg-c": "pkg-b"}) == {"dog": "pkg-b"}
    # Without the mapping the leak check sees two packages in the cross split; with a pkg-c clip in train, a leak.
    with pytest.raises(AssertionError, match="cross split from several sources"):
        assert_no_split_leaks(records)
    leaky = [dict(r, split="train") if r["group"] == "pkg-c:rec0" else r for r in records]
    with pytest.raises(AssertionError, match=r"source \['pkg-b'\] in cross and in train/test"):
        assert_no_split_leaks(leaky, {"pkg-c": "pkg-b"})
    for bad, match in (("pkg-x", "must be a package of the class map"), ("pkg-c", "must name another package")):
        wrong = _class_map()
        wrong["packages"]["pkg-c"] = {"root": ".", "short": "c", "license": "CC0-1.0", "shares_samples_with": bad}
        with pytest.raises(ValueError, match=match):
            load_class_map(wrong)
    chain = _class_map()
    chain["packages"]["pkg-b"]["shares_samples_with"] = "pkg-a"
    chain["packages"]["pkg-a"]["shares_samples_with"] = "pkg-b"
    with pytest.raises(ValueError, match="shares with none itself"):
        load_class_map(chain)


def test_a_package_never_held_out_only_adds_training_clips() -> None:
    sizes = {"pkg-a": 4, "pkg-b": 5, "pkg-c": 3}
    packages, groups = _clips(sizes)
    held_by_hash = {}
    for name in ("dog", "cat", "cow", "pig", "owl", "frog", "duck", "bell"):
        held_by_hash[name] = assign_source_splits(packages, groups, 0.25, salt=name, min_clips=3)[1]
        splits, held, reason = assign_source_splits(packages, groups, 0.25, salt=name, min_clips=3, never={"pkg-c"})
        assert held != "pkg-c" and reason == "chosen by hash among ['pkg-a', 'pkg-b']"
        assert {splits[g] for p, g in zip(packages, groups) if p == "pkg-c"} <= {"train", "test"}
        assert assert_no_split_leaks(_as_records(name, packages, groups, splits)) == {name: held}
        # Among the others the hash order is kept: a class that held out pkg-a or pkg-b still does.
        if held_by_hash[name] != "pkg-c":
            assert held == held_by_hash[name]
        # A pin in the class map still holds the package out.
        pinned = assign_source_splits(packages, groups, 0.25, salt=name, min_clips=3, hold_out="pkg-c", never={"pkg-c"})
        assert pinned[1] == "pkg-c"
    assert "pkg-c" in held_by_hash.values()  # the test exercises a class that would have held pkg-c out
    # Only never-held-out packages left: none is held out, and the reason says why.
    splits, held, reason = assign_source_splits(packages, groups, 0.25, salt="dog", min_clips=3, never=set(sizes))
    assert held is None and "cross" not in splits.values() and "never held out" in reason


def test_class_map_held_out_and_patches_are_validated() -> None:
    raw = _class_map()
    raw["packages"]["pkg-b"]["held_out"] = False
    cmap = load_class_map(raw)
    assert cmap.packages["pkg-b"].held_out is False and cmap.packages["pkg-a"].held_out is True
    raw["packages"]["pkg-b"]["held_out"] = "no"
    with pytest.raises(ValueError, match="packages.pkg-b: held_out must be true or false"):
        load_class_map(raw)
    both = _class_map()
    both["packages"]["pkg-b"] |= {"soundfont": "a.sf2", "patches": "a.cfg"}
    with pytest.raises(ValueError, match="packages.pkg-b: give 'soundfont' or 'patches', not both"):
        load_class_map(both)
    render = _class_map()
    render["classes"]["cat"]["sources"] = [
        {"package": "pkg-a", "render": {"program": 0, "keys": [60], "velocities": [80]}}
    ]
    with pytest.raises(ValueError, match="has no 'soundfont' or 'patches' to render from"):
        load_class_map(render)
    render["packages"]["pkg-a"]["patches"] = "freepats.cfg"
    assert load_class_map(render).packages["pkg-a"].instrument_file.name == "freepats.cfg"


def test_class_map_fingerprint_follows_the_cross_source_choice(monkeypatch) -> None:
    from demo.datasets import builder

    auto = class_map_fingerprint(load_class_map(_class_map()))
    assert class_map_fingerprint(load_class_map(_class_map())) == auto
    assert class_map_fingerprint(load_class_map(_class_map(cross_source_package="pkg-a"))) != auto
    assert class_map_fingerprint(load_class_map(_class_map(cross_source_package=False))) != auto
    monkeypatch.setattr(builder, "SPLIT_VERSION", builder.SPLIT_VERSION + 1)  # new split rules, same map
    assert class_map_fingerprint(load_class_map(_class_map())) != auto
