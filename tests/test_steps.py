"""The step runner (clapkit.steps): a finished step is reused for the same fingerprint, redone for another, and a
half-finished folder (no marker) is emptied and redone."""

from __future__ import annotations

import json

import pytest

from clapkit.steps import DONE, STARTED, StepRunner, fingerprint


def _counting_step(calls: list[str], folder, value: str):
    def run() -> dict:
        calls.append(value)
        (folder / "out.txt").write_text(value)
        return {"value": value}

    return run


def test_fingerprint_is_stable_and_order_sensitive():
    assert fingerprint("a", {"x": 1, "y": [1, 2]}) == fingerprint("a", {"y": [1, 2], "x": 1})
    assert fingerprint("a", "b") != fingerprint("b", "a")
    assert len(fingerprint("a")) == 16


def test_same_fingerprint_reuses_the_step(tmp_path):
    lines: list[str] = []
    calls: list[str] = []
    folder = tmp_path / "step"
    first = StepRunner(lines.append).step("make", "fp1", folder, _counting_step(calls, folder, "one"))
    again = StepRunner(lines.append)
    second = again.step("make", "fp1", folder, _counting_step(calls, folder, "two"))
    assert first == second == {"value": "one"} and calls == ["one"]
    assert again.timings["make"] == {"wall_s": 0.0, "cpu_s": 0.0, "reused": True}
    assert again.fingerprints == {"make": "fp1"}
    assert lines[-1] == f"[make] reused ({folder})"


def test_changed_fingerprint_redoes_the_step_from_an_empty_folder(tmp_path):
    calls: list[str] = []
    folder = tmp_path / "step"
    StepRunner(lambda line: None).step("make", "fp1", folder, _counting_step(calls, folder, "one"))
    (folder / "stale.txt").write_text("left over")
    runner = StepRunner(lambda line: None)
    result = runner.step("make", "fp2", folder, _counting_step(calls, folder, "two"))
    assert result == {"value": "two"} and calls == ["one", "two"]
    assert not (folder / "stale.txt").exists()
    assert json.loads((folder / DONE).read_text()) == {"fingerprint": "fp2", "result": {"value": "two"}}
    assert set(runner.timings["make"]) == {"wall_s", "cpu_s"}


def test_half_finished_folder_is_redone(tmp_path):
    folder = tmp_path / "step"
    folder.mkdir()
    (folder / "partial.bin").write_text("interrupted")  # a run died before writing the marker
    calls: list[str] = []
    StepRunner(lambda line: None).step("make", "fp1", folder, _counting_step(calls, folder, "one"))
    assert calls == ["one"] and not (folder / "partial.bin").exists()


def test_kept_folder_is_not_emptied(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "clip.flac").write_text("reused by the builder")
    StepRunner(lambda line: None).step("data", "fp1", folder, lambda: {})
    assert (folder / "clip.flac").is_file()


def test_failed_step_leaves_no_marker(tmp_path):
    folder = tmp_path / "step"

    def fail() -> dict:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        StepRunner(lambda line: None).step("make", "fp1", folder, fail)
    assert not (folder / DONE).exists()


def test_recorded_fingerprints_are_read_only(tmp_path):
    runner = StepRunner(lambda line: None)
    runner.record("data", "abc")
    assert runner.fingerprints["data"] == "abc"
    with pytest.raises(TypeError):
        runner.fingerprints["data"] = "other"


def test_resumable_step_keeps_a_half_finished_folder_of_the_same_fingerprint(tmp_path):
    folder = tmp_path / "step"

    def interrupted() -> dict:
        (folder / "checkpoint.txt").write_text("step 5")
        raise KeyboardInterrupt  # the run is stopped mid-step

    with pytest.raises(KeyboardInterrupt):
        StepRunner(lambda line: None).step("train", "fp1", folder, interrupted, resumable=True)
    assert json.loads((folder / STARTED).read_text()) == {"fingerprint": "fp1"} and not (folder / DONE).exists()

    lines: list[str] = []
    seen: list[str] = []

    def resume() -> dict:
        seen.append((folder / "checkpoint.txt").read_text())
        return {"done": True}

    StepRunner(lines.append).step("train", "fp1", folder, resume, resumable=True)
    assert seen == ["step 5"] and lines[0] == f"[train] resuming in {folder}"
    # Another fingerprint, or a step that is not resumable, starts from an empty folder.
    (folder / "checkpoint.txt").write_text("step 9")
    (folder / DONE).unlink()
    StepRunner(lambda line: None).step("train", "fp2", folder, lambda: {"done": True}, resumable=True)
    assert not (folder / "checkpoint.txt").exists()
    (folder / "checkpoint.txt").write_text("step 9")
    (folder / DONE).unlink()
    StepRunner(lambda line: None).step("train", "fp2", folder, lambda: {"done": True})
    assert not (folder / "checkpoint.txt").exists()
