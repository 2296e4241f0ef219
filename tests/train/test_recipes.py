"""``python -m train recipe``: each tiny recipe runs every stage end to end, writes its evaluation, and resumes
after a kill at the first unfinished stage (from that stage's last checkpoint)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from clapkit.steps import DONE
from tests.train.conftest import run_train
from train.recipes import cli
from train.recipes.base import apply_sets, load_recipe_config

COMPA_STAGES = ("vanilla", "hardneg", "modular")


def _wait_for(path: Path, proc, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"the recipe ended (exit {proc.returncode}) before {path} appeared:\n{proc.stdout.read()}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout:.0f} s")
        time.sleep(0.05)


def test_compa_tiny_runs_the_curriculum_and_resumes_after_a_kill(tmp_path):
    out = tmp_path / "compa"
    # The last stage trains long enough (40 steps, a checkpoint every 2) to be killed inside it.
    args = ["recipe", "compa", "--scale", "tiny", "--out", str(out), "--quiet"]
    args += ["--set", "stages.modular.set.trainer.max_steps=40"]
    first = run_train(args, cwd=tmp_path)
    _wait_for(out / "modular" / "checkpoints" / "last.ckpt", first)
    first.kill()
    first.communicate()
    assert not (out / "modular" / DONE).exists() and not (out / "results.json").exists()
    finished = {s: (out / s / DONE).stat().st_mtime_ns for s in ("data", "vanilla", "hardneg")}

    second = run_train(args, cwd=tmp_path)
    log, _ = second.communicate(timeout=600)
    assert second.returncode == 0, log
    for stage, mtime in finished.items():  # finished stages are reused, not redone
        assert f"[{stage}] reused ({out / stage})" in log
        assert (out / stage / DONE).stat().st_mtime_ns == mtime
    assert f"[modular] resuming in {out / 'modular'}" in log and "resuming from" in log and "last.ckpt" in log

    results = json.loads((out / "results.json").read_text())
    assert list(results["stages"]) == list(COMPA_STAGES)
    for stage in COMPA_STAGES:  # every stage evaluated on every held-out set, with its chance level
        metrics = results["stages"][stage]
        assert {"zeroshot", "retrieval", "compa_order", "compa_attribute"} <= set(metrics)
        assert metrics["zeroshot"]["chance_top1"] == pytest.approx(1 / 6)  # six synthetic classes
        assert metrics["compa_order"]["num_instances"] == 6 and metrics["compa_attribute"]["num_instances"] == 6
        assert json.loads((out / stage / "results.json").read_text()) == metrics
    assert "CompA-attribute group" in (out / "results.md").read_text()

    # The curriculum: each stage starts from the previous stage's export with its own loss and inputs.
    configs = {s: yaml.safe_load((out / s / "config.yaml").read_text()) for s in COMPA_STAGES}
    assert [configs[s]["model"]["loss"] for s in COMPA_STAGES] == ["infonce", "compa_hardneg", "compa_modular"]
    assert configs["vanilla"]["model"].get("init_from") is None
    assert configs["hardneg"]["model"]["init_from"] == str(out / "vanilla" / "model")
    assert configs["modular"]["model"]["init_from"] == str(out / "hardneg" / "model")
    assert configs["hardneg"]["data"]["max_negatives"] == 4 and configs["modular"]["data"]["max_positives"] == 2
    assert all(c["data"]["train_shards"] == str(out / "data" / "shards") for c in configs.values())
    # ... and trains: every stage moves the weights it was given; the resumed stage ran to its 40 steps in all.
    weights = {s: load_file(out / s / "model" / "model.safetensors") for s in COMPA_STAGES}
    for before, after in zip(COMPA_STAGES, COMPA_STAGES[1:]):
        assert weights[before].keys() == weights[after].keys()
        assert any(not weights[before][k].equal(weights[after][k]) for k in weights[after]), (before, after)
    done = json.loads((out / "modular" / DONE).read_text())["result"]
    assert done["train"]["steps"] == 40
    assert {"vanilla", "hardneg", "modular"} <= set(results["timings"])

    # The data stage: shards carry the composed scenes with their counterfactuals, and the benchmark holds
    # only class pairs no training scene combined.
    data = json.loads((out / "data" / DONE).read_text())["result"]
    assert data["scenes"] == 48 and data["samples"] == 48 * 2 + 6 * 6 and data["skipped"] == 0
    assert data["held_out_pairs"] >= 1


def test_recipe_config_overrides_and_errors(tmp_path, capsys):
    config = load_recipe_config("compa", "tiny", sets=["stages.vanilla.set.trainer.max_steps=9", "seed=3"])
    assert config["stages"]["vanilla"]["set"]["trainer.max_steps"] == 9 and config["seed"] == 3
    assert apply_sets({"a": {"b": 1}}, ["a.c=[1, 2]", "d=null"]) == {"a": {"b": 1, "c": [1, 2]}, "d": None}
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        apply_sets({}, ["no-equals-sign"])
    with pytest.raises(ValueError, match="a.b is not a mapping"):
        apply_sets({"a": {"b": 1}}, ["a.b.c=2"])
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("recipe: afclap\n")
    with pytest.raises(ValueError, match="expected a mapping with 'recipe: compa'"):
        load_recipe_config("compa", "tiny", wrong)
    broken = tmp_path / "broken.yaml"
    broken.write_text("recipe: [compa\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_recipe_config("compa", "tiny", broken)

    with pytest.raises(SystemExit) as err:
        cli.main(["compa", "--scale", "tiny", "--set", "oops"])
    assert err.value.code == 2 and "expected KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["nosuchrecipe"])
    assert "invalid choice: 'nosuchrecipe'" in capsys.readouterr().err
    assert cli.main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert "compa" in listing and "scales: tiny" in listing

    # A config whose stages do not match the curriculum is refused before anything trains.
    out = tmp_path / "bad"
    assert not out.exists()
    with pytest.raises(SystemExit) as err:
        cli.main(["compa", "--out", str(out), "--quiet", "--set", "stages.extra={config: x.yaml}"])
    assert err.value.code == 2 and "expected exactly vanilla, hardneg, modular" in capsys.readouterr().err
    assert not (out / "data").exists()
    # The demo scale reads a finished demo run, and says how to make one when there is none.
    with pytest.raises(SystemExit) as err:
        cli.main(["compa", "--scale", "demo", "--out", str(out), "--set", f"data.run_dir={tmp_path / 'nodemo'}"])
    message = capsys.readouterr().err
    assert err.value.code == 2 and "the demo's shards step has not finished" in message and "make demo" in message
