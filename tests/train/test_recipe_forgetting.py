"""``python -m train recipe forgetting``: stage 1, the base LLM's self-replay data, stage 2 without and with replay,
and the text QA + audio scores of every variant; resumes after a kill between stages."""

from __future__ import annotations

import json

import pytest
import yaml

from clapkit.steps import DONE
from tests.train.conftest import run_train, wait_for

STAGES = ("stage1", "stage2", "stage2_replay")


def test_forgetting_tiny_measures_replay_scaling_and_merging_and_resumes_after_a_kill(tmp_path, smollm2_folder):
    from safetensors.torch import load_file as load_tensors

    from clapkit.lalm.forgetting import load_text_qa

    out = tmp_path / "forgetting"
    args = ["recipe", "forgetting", "--scale", "tiny", "--out", str(out), "--quiet"]
    args += ["--set", "evaluate.text_qa_limit=16"]
    # SmolLM2 as a saved folder: the recipe loads it seven times (stage 1, the replay data, both stage-2 runs, the
    # evaluation's three models), each a second instead of the GGUF's ~15 s.
    args += ["--set", f"stages.stage1.set.model.model.init_args.llm={smollm2_folder}"]
    first = run_train(args, cwd=tmp_path)
    wait_for(out / "stage1" / DONE, first, timeout=300)
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
    assert all(c["llm"] == str(smollm2_folder) and not c["llm_finetuned"] for c in configs.values())
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
