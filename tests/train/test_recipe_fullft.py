"""``python -m train recipe fullft``: SeaLLMs-style full fine-tuning at tiny scale — the two-turn data with the loss on
both answers, a stage 1 that moves the projector alone, a stage 2 that moves the encoder's audio tower, the projector
and every LLM weight (no LoRA) into a self-contained export, the scores of both models, and the resume after a kill
between stages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from clapkit.lalm.chat import IGNORE_INDEX
from clapkit.lalm.data import ConversationReader
from clapkit.lalm.evaluate import label_accuracy, wer
from clapkit.steps import DONE
from tests.train.conftest import run_train, wait_for
from train.recipes.fullft import FOLLOWUPS, LEVELS, _samples
from train.recipes.lalm_data import QUESTION

SOFT = {"hiss", "knock"}  # the synthetic classes below data.loud_db (-12 dBFS); the other four are above


def _encoder(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(next((folder / "encoder").glob("*.safetensors")))


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> dict[str, bool]:
    """Float tensor name under ``prefix`` → whether it differs between the two state dicts."""
    return {k: not before[k].equal(after[k]) for k in before if k.startswith(prefix) and before[k].is_floating_point()}


def test_fullft_tiny_trains_everything_in_stage_2_exports_it_whole_and_resumes_after_a_kill(tmp_path, smollm2_folder):
    import clapkit.lalm
    from clapkit.lalm.io import load_llm
    from clapkit.lalm.projectors import build_projector
    from train.clap import build_clap_model

    out = tmp_path / "fullft"
    args = ["recipe", "fullft", "--scale", "tiny", "--out", str(out), "--quiet"]
    # SmolLM2 as a saved folder (the same weights as `llm: smollm2`): each of the recipe's loads takes ~1 s, not ~15.
    args += ["--set", f"stages.stage1.set.model.model.init_args.llm={smollm2_folder}"]
    first = run_train(args, cwd=tmp_path)
    wait_for(out / "stage1" / DONE, first, timeout=400)
    first.kill()  # between stages: stage 1 finished, stage 2 not
    first.communicate()
    assert not (out / "stage2" / DONE).exists() and not (out / "results.json").exists()
    finished = {s: (out / s / DONE).stat().st_mtime_ns for s in ("data", "stage1")}

    second = run_train(args, cwd=tmp_path)
    log, _ = second.communicate(timeout=900)
    assert second.returncode == 0, log
    for stage, mtime in finished.items():  # finished stages are reused, not redone
        assert f"[{stage}] reused ({out / stage})" in log and (out / stage / DONE).stat().st_mtime_ns == mtime
    assert (out / "stage2" / DONE).is_file() and (out / "evaluate" / DONE).is_file()

    # --- the data: two-turn conversations, one per training clip and follow-up; turn 2 about the clip of turn 1.
    data = json.loads((out / "data" / DONE).read_text())["result"]
    assert data["followups"] == ["describe", "loudness"] and data["conversations"] == {"stage1": 36, "stage2": 72}
    convs = list(ConversationReader(data["stage2_shards"], 16000, train=False).samples())
    assert len(convs) == 72 and all(len(c.audio) == 1 for c in convs)
    assert all([m["role"] for m in c.messages] == ["user", "assistant"] * 2 for c in convs)
    assert all(c.messages[0]["content"] == QUESTION for c in convs)
    for kind, question in FOLLOWUPS.items():
        of_kind = [c for c in convs if c.meta["followup"] == kind]
        assert len(of_kind) == 36 and all(c.messages[2]["content"] == question for c in of_kind)
    for c in convs:
        if c.meta["followup"] == "loudness":  # the clip's RMS level against data.loud_db
            level = "soft" if c.meta["labels"][0] in SOFT else "loud"
            assert c.messages[3]["content"] == f"It is {level}.", (c.meta, c.messages)
        else:  # turn 1 names the class, turn 2 is the clip's caption, which names it too
            label = c.meta["labels"][0]
            assert c.messages[1]["content"] == f"A {label}." or c.messages[1]["content"].lower().startswith(
                f"a {label}"
            )
            assert label in c.messages[3]["content"].lower() and c.messages[3]["content"] != c.messages[1]["content"]

    # --- stage 1 trained the projector alone: its checkpoint holds only projector weights, its export references the
    # untouched LLM, and its encoder is the freshly built one.
    ckpt1 = torch.load(out / "stage1" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt1["state_dict"] and all(k.startswith("model.projector.") for k in ckpt1["state_dict"])
    stage1 = json.loads((out / "stage1" / "model" / "lalm_config.json").read_text())
    assert stage1["parts"] == {"encoder": "encoder"} and stage1["config"]["llm"] == str(smollm2_folder)
    assert not stage1["config"]["llm_finetuned"] and stage1["config"]["freeze_encoder"]
    init_args = yaml.safe_load((out / "stage1" / "config.yaml").read_text())["model"]["model"]["init_args"]
    seed = init_args.get("seed", 0)
    torch.manual_seed(seed)  # as train.lalm.build_lalm builds the encoder, then the projector
    base_encoder, _ = build_clap_model("htsat-tiny", init_args["encoder_overrides"], pretrained=False)
    enc1 = _encoder(out / "stage1" / "model")
    assert enc1.keys() == base_encoder.state_dict().keys()
    assert all(enc1[k].equal(v) for k, v in base_encoder.state_dict().items())
    base_llm, _ = load_llm(smollm2_folder, tokenizer_path=out / "stage1" / "model" / "tokenizer", progress=False)
    torch.manual_seed(seed)
    base_projector = build_projector(
        "mlp2x_gelu",
        base_encoder.sequence_dim,
        base_llm.config.hidden_size,
        num_layers=base_llm.config.num_hidden_layers,
        **init_args["projector_params"],
    ).state_dict()
    base_llm = base_llm.state_dict()
    proj = {s: load_file(out / s / "model" / "projector.safetensors") for s in ("stage1", "stage2")}
    assert proj["stage1"].keys() == base_projector.keys()
    assert all(not proj["stage1"][k].equal(v) for k, v in base_projector.items())
    assert all(not proj["stage2"][k].equal(v) for k, v in proj["stage1"].items())

    # --- stage 2 trained the encoder's audio tower and every dense LLM weight (no LoRA); the text side stayed.
    config2 = yaml.safe_load((out / "stage2" / "config.yaml").read_text())["model"]
    assert config2["full_llm"] and config2["unfreeze_encoder"] and config2["lora"] is None and config2["stage"] == 2
    stage2 = json.loads((out / "stage2" / "model" / "lalm_config.json").read_text())
    assert stage2["parts"] == {"encoder": "encoder", "llm": "llm"}  # saved whole: self-contained
    assert stage2["config"]["llm_finetuned"] and not stage2["config"]["freeze_encoder"]
    assert not (out / "stage2" / "model" / "lora").exists()
    enc2 = _encoder(out / "stage2" / "model")
    audio = _changed(enc1, enc2, "audio_tower.")
    assert len(audio) > 50 and all(audio.values()), [k for k, v in audio.items() if not v]
    assert not any(_changed(enc1, enc2, "text_tower.").values())
    llm2 = load_file(out / "stage2" / "model" / "llm" / "model.safetensors")
    assert not any("lora" in k for k in llm2)
    base_llm.pop("lm_head.weight", None)  # tied to the input embedding: saved once
    assert set(base_llm) == set(llm2) and len(base_llm) > 200
    for k, before in base_llm.items():  # every weight of every layer, norms and embeddings moved
        rows = [slice(0, n) for n in before.shape]  # the embedding grew by the two audio-token rows
        assert not llm2[k][tuple(rows)].equal(before), k

    # The export reloads with exactly the weights stage 2 ended with (its last checkpoint holds all of them).
    ckpt2 = torch.load(out / "stage2" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True, mmap=True)
    trained = {k.removeprefix("model."): v for k, v in ckpt2["state_dict"].items()}
    assert any(k.startswith("encoder.audio_tower.") for k in trained) and not any("text_tower" in k for k in trained)
    model = clapkit.lalm.load(out / "stage2" / "model")
    state = model.state_dict()
    assert set(base_llm) <= {k.removeprefix("llm.") for k in trained}  # every LLM weight was trained
    for k, v in trained.items():
        assert state[k].equal(v), k

    # The collator puts the loss on both assistant turns and nowhere else.
    batch = model.collator()(convs[:4])
    for row, labels, conv in zip(batch["input_ids"], batch["labels"], convs[:4]):
        on = labels != IGNORE_INDEX
        assert torch.equal(row[on], labels[on])
        spans = int((on[1:] & ~on[:-1]).sum()) + int(on[0])
        assert spans == 2, model.tokenizer.decode(row[on])
        answered = model.tokenizer.decode(row[on])
        assert conv.messages[1]["content"] in answered and conv.messages[3]["content"] in answered
        assert conv.messages[2]["content"] not in answered and "What sound" not in answered
    # Evaluation prompts turn 2 with the reference turn 1 in the context and the turn-2 answer left out.
    tests = [json.loads(line) for line in Path(data["test"]).read_text().splitlines()]
    samples = _samples(tests[:1], data["aliases"], data["followups"], model.sample_rate)
    prompts = model.collator(generation=True)(samples)
    assert [len(s.messages) for s in samples] == [1, 4, 4] and prompts["references"][0] is None
    for ids, sample, reference in zip(prompts["input_ids"][1:], samples[1:], prompts["references"][1:]):
        text = model.tokenizer.decode(ids, skip_special_tokens=False)
        assert sample.messages[1]["content"] in text and sample.messages[2]["content"] in text
        assert reference == sample.messages[3]["content"] and reference not in text
        assert text.rstrip().endswith("assistant")

    # --- the evaluation: per model, turn 1, each follow-up after the reference turn 1, and the text QA.
    results = json.loads((out / "results.json").read_text())
    aliases = data["aliases"]
    assert [t["level"] == "soft" for t in tests] == [t["label"] in SOFT for t in tests]
    assert list(results["models"]) == ["stage1", "stage2"] and results["test_clips"] == 6
    for name, m in results["models"].items():
        assert m["turn1"]["n"] == 6 and 0 <= m["turn1"]["accuracy"] <= 1
        assert set(m["turn2"]) == {"describe", "loudness"}
        assert m["turn2"]["describe"]["n"] == 6 and m["turn2"]["describe"]["wer"] >= 0
        assert 0 <= m["turn2"]["describe"]["names_class"] <= 1 and m["turn2"]["loudness"]["n"] == 6
        assert m["text_qa"]["num_items"] == 8 and 0 <= m["text_qa"]["accuracy"] <= 1
        preds = [json.loads(line) for line in (out / "evaluate" / f"predictions_{name}.jsonl").read_text().splitlines()]
        assert sorted(p["turn"] for p in preds) == [1] * 6 + [2] * 12
        # Each score comes from its own turn's answers against that clip's reference.
        turn1 = [p for p in preds if p["turn"] == 1]
        assert [p["answer"] for p in turn1] == [t["label"] for t in tests]
        assert m["turn1"] == label_accuracy([p["prediction"] for p in turn1], [t["label"] for t in tests], aliases)
        describe = [p for p in preds if p["followup"] == "describe"]
        assert [p["answer"] for p in describe] == [t["caption"] for t in tests]
        assert m["turn2"]["describe"]["wer"] == wer([t["caption"] for t in tests], [p["prediction"] for p in describe])
        loud = [p for p in preds if p["followup"] == "loudness"]
        assert [p["answer"] for p in loud] == [f"It is {t['level']}." for t in tests]
        levels = [t["level"] for t in tests]
        assert m["turn2"]["loudness"] == label_accuracy([p["prediction"] for p in loud], levels, LEVELS)
    base, tuned = results["models"]["stage1"]["text_qa"], results["models"]["stage2"]["text_qa"]
    assert base["kl_to_reference"] == 0.0 and base["agreement"] == 1.0
    assert base["accuracy"] > base["chance"]  # SmolLM2 answers these above chance
    assert tuned["kl_to_reference"] > 0  # the LLM itself was trained
    table = (out / "results.md").read_text()
    assert "turn 2 loud/soft %" in table and "text QA KL to stage 1" in table
    assert json.loads((out / "stage2" / DONE).read_text())["result"]["train"]["steps"] == 3
    # The full fine-tune's checkpoints (~1.6 GB) are not kept with pytest's last three temporary folders.
    shutil.rmtree(out / "stage2" / "checkpoints")
