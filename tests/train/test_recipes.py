"""``python -m train recipe``: each tiny recipe runs every stage end to end, writes its evaluation, and resumes
after a kill at the first unfinished stage (from that stage's last checkpoint)."""

from __future__ import annotations

import itertools
import json
import shutil
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
STAGES = ("stage1", "stage2", "stage2_replay")


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


def test_forgetting_tiny_measures_replay_scaling_and_merging_and_resumes_after_a_kill(tmp_path):
    from safetensors.torch import load_file as load_tensors

    from clapkit.lalm.forgetting import load_text_qa

    out = tmp_path / "forgetting"
    args = ["recipe", "forgetting", "--scale", "tiny", "--out", str(out), "--quiet"]
    args += ["--set", "evaluate.text_qa_limit=16"]
    first = run_train(args, cwd=tmp_path)
    _wait_for(out / "stage1" / DONE, first, timeout=300)
    first.kill()  # between stages: stage 1 finished, the replay data not
    first.communicate()
    assert not (out / "stage2" / DONE).exists()
    stage1_done = (out / "stage1" / DONE).stat().st_mtime_ns

    second = run_train(args, cwd=tmp_path)
    log, _ = second.communicate(timeout=900)
    assert second.returncode == 0, log
    assert f"[stage1] reused ({out / 'stage1'})" in log and (out / "stage1" / DONE).stat().st_mtime_ns == stage1_done
    for stage in ("replay_data", "stage2", "stage2_replay", "evaluate"):
        assert (out / stage / DONE).is_file(), stage

    # Stage 1 trains the projector only: the LLM stays SmolLM2 by reference; stage 2 adds LoRA on top of it and the
    # frozen encoder is the same in every stage.
    configs = {s: json.loads((out / s / "model" / "lalm_config.json").read_text())["config"] for s in STAGES}
    assert all(c["llm"] == "smollm2" and not c["llm_finetuned"] for c in configs.values())
    assert not (out / "stage1" / "model" / "lora").exists()
    assert (out / "stage2" / "model" / "lora").is_dir() and (out / "stage2_replay" / "model" / "lora").is_dir()
    encoders = [load_tensors(next((out / s / "model" / "encoder").glob("*.safetensors"))) for s in STAGES]
    assert all(e.keys() == encoders[0].keys() and all(e[k].equal(encoders[0][k]) for k in e) for e in encoders)
    projectors = [load_tensors(out / s / "model" / "projector.safetensors") for s in STAGES]
    assert any(not projectors[0][k].equal(projectors[1][k]) for k in projectors[0])
    # Replay: the base's own answers to the text QA set's replay prompts, mixed into one stage-2 run only.
    stage2 = {s: yaml.safe_load((out / s / "config.yaml").read_text())["data"] for s in STAGES[1:]}
    assert stage2["stage2"]["replay_ratio"] == 0.0 and stage2["stage2"]["text_shards"] is None
    assert stage2["stage2_replay"]["replay_ratio"] == 0.5
    assert stage2["stage2_replay"]["text_shards"] == str(out / "replay_data" / "text")
    replay = json.loads((out / "replay_data" / DONE).read_text())["result"]
    assert replay["conversations"] == len(load_text_qa(split="replay")) == 31

    results = json.loads((out / "results.json").read_text())
    variants = results["variants"]
    assert list(variants) == [
        "base (stage 1)", "stage 2, no replay", "stage 2, replay", "no replay, LoRA x 0.5", "no replay, merged a=0.25"
    ]  # fmt: skip
    base = variants["base (stage 1)"]["text_qa"]
    assert base["num_items"] == 16 and base["kl_to_reference"] == 0.0 and base["agreement"] == 1.0
    assert base["accuracy"] > base["chance"]  # SmolLM2 answers these above chance
    drop = {name: base["base_answer_logprob"] - v["text_qa"]["base_answer_logprob"] for name, v in variants.items()}
    # Without replay the base's own text answers become much less likely; replay keeps them; discounting the LoRA
    # update or merging towards the base undoes part of the drift, the more the closer to the base.
    assert drop["stage 2, replay"] < drop["stage 2, no replay"] - 0.3
    assert results["forgetting"]["base_answer_drop_replay"] == pytest.approx(drop["stage 2, replay"])
    assert drop["no replay, merged a=0.25"] < drop["no replay, LoRA x 0.5"] < drop["stage 2, no replay"]
    assert all(0 <= v["audio_label"]["accuracy"] <= 1 and v["audio_label"]["n"] == 12 for v in variants.values())
    assert "KL to base" in (out / "results.md").read_text()


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng speaks the instructions (make venv installs it)"
)
def test_llaso_tiny_converts_three_layouts_trains_both_stages_and_scores_abstention(tmp_path):
    from clapkit.lalm.llaso import read_llaso

    out = tmp_path / "llaso"
    args = ["recipe", "llaso", "--scale", "tiny", "--out", str(out), "--quiet"]
    first = run_train(args, cwd=tmp_path)
    _wait_for(out / "stage1" / DONE, first, timeout=300)
    first.kill()  # between stages
    first.communicate()
    second = run_train(args, cwd=tmp_path)
    log, _ = second.communicate(timeout=900)
    assert second.returncode == 0, log
    assert f"[data] reused ({out / 'data'})" in log and f"[stage1] reused ({out / 'stage1'})" in log

    # The data went through the LLaSO converter: every layout, answerable and not, nothing skipped.
    data = json.loads((out / "data" / DONE).read_text())["result"]
    for split in ("train", "test"):
        report = data["reports"][split]
        assert set(report["layouts"]) == {"text_audio", "audio_text", "pure_audio"} and not report["skipped"]
        assert report["answerable"]["true"] > report["answerable"]["false"] > 0
    records, _ = read_llaso(data["test"])
    pure = next(r for r in records if r.fields["layout"] == "pure_audio")
    assert len(pure.fields["extra_audio"]) == 1  # the spoken instruction clip, then the sound
    assert "instructions" in pure.audio
    # Stage 1 trains the projector only; stage 2 fine-tunes the whole LLM (saved with the adapter), as LLaSO.
    stage1 = json.loads((out / "stage1" / "model" / "lalm_config.json").read_text())
    stage2 = json.loads((out / "stage2" / "model" / "lalm_config.json").read_text())
    assert not stage1["config"]["llm_finetuned"] and "llm" not in stage1["parts"]
    assert stage2["config"]["llm_finetuned"] and stage2["parts"]["llm"] == "llm"
    assert not (out / "stage2" / "model" / "lora").exists()

    results = json.loads((out / "results.json").read_text())
    groups = [(r.fields["layout"], r.fields["answerable"]) for r in records]
    assert results["questions"] == sum(min(4, groups.count(g)) for g in set(groups))
    for model in ("stage1", "stage2"):
        for layout in ("text_audio", "audio_text", "pure_audio"):
            m = results["models"][model][layout]
            assert m["answerable"] == 4 and m["unanswerable"] >= 1
            assert 0 <= m["accuracy"] <= 1 and 0 <= m["abstain_unanswerable"] <= 1
    predictions = (out / "evaluate" / "predictions_stage2.jsonl").read_text().splitlines()
    assert len(predictions) == results["questions"]
    assert "abstains, unanswerable %" in (out / "results.md").read_text()


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
