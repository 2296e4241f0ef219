"""The demo's tower step (``demo.tower``): the adapted weights are written once, reused, and are what
``Workspace.model`` — and so the features, the arms and the exported models — carry."""

from __future__ import annotations

import torch

from clapkit.checkpoint import read_safetensors
from clapkit.steps import StepRunner
from demo.config import load_config
from demo.data import Workspace, build_dataset
from demo.tower import TOWER_WEIGHTS, make_tower
from tests.demo.test_pipeline import _config


def _work(tmp_path, steps: int) -> Workspace:
    raw = _config(tmp_path)
    raw["tower"] = {"steps": steps, "batch_size": 4, "seconds": 0.5, "train": ["model.audio_encoder.layers."]}
    return Workspace(load_config(raw), progress=False)


def test_the_tower_step_adapts_writes_and_reuses_the_weights(tmp_path):
    lines: list[str] = []
    work = _work(tmp_path, steps=2)
    runner = StepRunner(lines.append)
    build_dataset(work, runner)
    pretrained = {k: v.clone() for k, v in work.model().audio_tower.state_dict().items()}
    path = make_tower(work, runner)
    assert path == work.out / "tower" / TOWER_WEIGHTS and work.tower_weights == path
    saved = read_safetensors(path)
    live = work.model().audio_tower.state_dict()
    assert set(saved) == set(live) and all(torch.equal(saved[k], live[k]) for k in saved)
    changed = {k for k in saved if not torch.equal(saved[k], pretrained[k])}
    assert changed and all(k.startswith("model.audio_encoder.layers.") for k in changed)
    assert any("adapted" in line and "12 training clips of 4 classes, 2 steps" in line for line in lines)

    again = StepRunner(lines.append)
    other = _work(tmp_path, steps=2)
    build_dataset(other, again)
    assert make_tower(other, again) == path and any(line.startswith("[tower] reused") for line in lines)
    assert all(torch.equal(saved[k], v) for k, v in other.model().audio_tower.state_dict().items())


def test_without_steps_the_pretrained_tower_is_used(tmp_path):
    work = _work(tmp_path, steps=0)
    runner = StepRunner(lambda line: None)
    build_dataset(work, runner)
    assert make_tower(work, runner) is None and work.tower_weights is None
    assert not (work.out / "tower").exists()
