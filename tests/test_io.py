"""``clapkit.io.atomic_replace_dir``: a folder is swapped in whole, or not at all."""

from __future__ import annotations

import os

import pytest

from clapkit import io as clapkit_io
from clapkit.io import atomic_replace_dir


def write_folder(path, files: dict[str, str]) -> None:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)


def contents(path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(path.iterdir())}


def test_finished_write_replaces_the_folder(tmp_path):
    target = tmp_path / "model"
    write_folder(target, {"config.json": "old", "stale.bin": "x"})
    with atomic_replace_dir(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target and not any(tmp.iterdir())
        (tmp / "config.json").write_text("new")
        assert contents(target) == {"config.json": "old", "stale.bin": "x"}  # untouched until the block ends
    assert contents(target) == {"config.json": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary or .old folder left


def test_new_folder_and_missing_parents_are_created(tmp_path):
    target = tmp_path / "a" / "b" / "index"
    with atomic_replace_dir(target) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert contents(target) == {"manifest.json": "{}"}


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_write_leaves_the_old_folder(tmp_path, error):
    target = tmp_path / "model"
    write_folder(target, {"config.json": "old"})
    with pytest.raises(type(error)), atomic_replace_dir(target) as tmp:
        (tmp / "config.json").write_text("half")
        raise error
    assert contents(target) == {"config.json": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_failed_swap_restores_the_old_folder(tmp_path, monkeypatch):
    target = tmp_path / "model"
    write_folder(target, {"config.json": "old"})
    real_replace = os.replace

    def replace(src, dst):
        if os.fspath(dst) == os.fspath(target) and not os.fspath(src).endswith(".old"):  # the new folder's move
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(clapkit_io.os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"), atomic_replace_dir(target) as tmp:
        (tmp / "config.json").write_text("new")
    monkeypatch.undo()
    assert contents(target) == {"config.json": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
