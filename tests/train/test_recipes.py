"""``python -m train recipe``: the runner's overrides and errors, and the compa recipe at tiny scale running every
stage end to end, writing its evaluation and resuming after a kill inside its last stage (from that stage's last
checkpoint). The other recipes have a file each (``test_recipe_<name>.py``)."""

from __future__ import annotations

import itertools
import json

import pytest
import yaml
from safetensors.torch import load_file

from clapkit.steps import DONE
from tests.train.conftest import run_train, wait_for
from train.recipes import cli
from train.recipes.base import apply_sets, load_recipe_config

COMPA_STAGES = ("vanilla", "hardneg", "modular")


def test_compa_tiny_runs_the_curriculum_and_resumes_after_a_kill(tmp_path):
    out = tmp_path / "compa"
    # The last stage trains long enough (40 steps, a checkpoint every 2) to be killed inside it.
    args = ["recipe", "compa", "--scale", "tiny", "--out", str(out), "--quiet"]
    args += ["--set", "stages.modular.set.trainer.max_steps=40"]
    first = run_train(args, cwd=tmp_path)
    wait_for(out / "modular" / "checkpoints" / "last.ckpt", first, timeout=180)
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
    for before, after in itertools.pairwise(COMPA_STAGES):
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


def test_lalm_demo_source_names_classes_by_id_with_the_demo_phrasings(tmp_path):
    """The demo source keys clips by class id, so the demo config's phrasings name them ("A dog.", not
    "A dog barking sound.")."""
    from train.recipes.base import RecipeContext
    from train.recipes.lalm_data import _demo, class_answer

    run, dataset = tmp_path / "run", tmp_path / "dataset"
    for step in ("shards", "benchmark"):
        (run / step).mkdir(parents=True)
        (run / step / DONE).write_text(json.dumps({"fingerprint": step}))
    config = {"data": {"dataset_dir": str(dataset)}, "phrases": {"dog": [["a dog", "barks", "barking"]]}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    dataset.mkdir()
    rows = {
        "train": [{"audio": "a.flac", "class": "dog", "labels": ["dog barking"], "captions": ["a dog barks"]}],
        "test": [{"audio": "b.flac", "class": "speech_five", "labels": ['a voice saying "five"'], "captions": ["x"]}],
    }
    for split, recs in rows.items():
        (dataset / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    ctx = RecipeContext("forgetting", "demo", {}, tmp_path / "out", progress=False)
    train, test, aliases = _demo(ctx, {"run_dir": str(run)}, tmp_path / "data")
    assert [r["label"] for r in train + test] == ["dog", "speech_five"]
    assert aliases["dog"] == ["a dog", "dog barking", "dog"]
    assert aliases["speech_five"] == ['a voice saying "five"', "speech five"]
    assert class_answer(aliases["dog"]) == "A dog."
    assert class_answer(aliases["speech_five"]) == 'A voice saying "five".'


def test_recipe_missing_tool_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    """A recipe that needs espeak-ng on a machine without it stops with exit 2 and how to install it."""
    import clapkit.tts

    real_which = clapkit.tts.shutil.which
    monkeypatch.setattr(clapkit.tts.shutil, "which", lambda name: None if name == "espeak-ng" else real_which(name))
    with pytest.raises(SystemExit) as err:
        cli.main(["salmonn", "--scale", "tiny", "--out", str(tmp_path / "run"), "--quiet"])
    message = capsys.readouterr().err
    assert err.value.code == 2 and "espeak-ng: program not found" in message and "apt-get install" in message
    assert "Traceback" not in message
