"""``python -m train recipe afclap --scale tiny``: LLM paraphrases → AF-CLAP loss → the encoder, frozen, under gated
cross-attention on two-minute recordings; killed between stages and resumed."""

from __future__ import annotations

import json

import soundfile as sf
import torch
import yaml
from safetensors.torch import load_file

from clapkit.steps import DONE
from tests.train.conftest import run_train, wait_for

LALM_STAGES = ("xattn_stage1", "xattn_stage2")


def test_afclap_tiny_paraphrases_trains_and_runs_long_audio_through_xattn_and_resumes(tmp_path):
    import clapkit
    import clapkit.lalm
    from train.recipes.afclap import QUESTIONS

    out = tmp_path / "afclap"
    args = ["recipe", "afclap", "--scale", "tiny", "--out", str(out), "--quiet"]
    first = run_train(args, cwd=tmp_path)
    wait_for(out / "afclap" / DONE, first, timeout=600)
    first.kill()
    first.communicate()
    assert not (out / "results.json").exists()
    finished = {s: (out / s / DONE).stat().st_mtime_ns for s in ("data", "paraphrases", "afclap")}
    second = run_train(args, cwd=tmp_path)
    log, _ = second.communicate(timeout=900)
    assert second.returncode == 0, log
    for stage, mtime in finished.items():  # finished stages reused, the LLM not asked again
        assert f"[{stage}] reused ({out / stage})" in log
        assert (out / stage / DONE).stat().st_mtime_ns == mtime

    # Paraphrases: `clapkit llm-captions` (SmolLM2) wrote validated positives for some of the first 10 captions
    # only; the shards were written again from the enriched listing.
    para = json.loads((out / "paraphrases" / DONE).read_text())["result"]
    assert para["llm"]["sent"] == 10 and para["llm"]["model"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert para["llm_positives"] >= 1 and para["samples"] == para["records"]
    before = [json.loads(line) for line in (out / "data" / "train_listing.jsonl").read_text().splitlines()]
    after = [json.loads(line) for line in (out / "paraphrases" / "listing.jsonl").read_text().splitlines()]
    added = []
    for i, (b, a) in enumerate(zip(before, after)):
        old, new = b.get("positives") or [], a.get("positives") or []
        assert new[: len(old)] == old and (i < 10 or new == old)
        added += [(a["captions"][0], p) for p in new[len(old) :]]
    assert len(added) == para["llm_positives"]
    assert all(p.strip() and p.lower() != caption.lower() for caption, p in added)

    # The AF-CLAP stage trains on those shards with M positives and N composition negatives, and is evaluated.
    config = yaml.safe_load((out / "afclap" / "config.yaml").read_text())
    assert config["model"]["loss"] == "afclap" and config["data"]["train_shards"] == para["train_shards"]
    assert config["data"]["max_positives"] == 3 and config["data"]["max_negatives"] == 4
    results = json.loads((out / "results.json").read_text())
    assert {"zeroshot", "retrieval", "compa_order", "compa_attribute"} <= set(results["encoder"])

    # Long audio: every recording lasts two minutes, its segments in the listed order, none silent.
    long = json.loads((out / "long_audio" / DONE).read_text())["result"]
    tests = [json.loads(line) for line in (out / "long_audio" / "test.jsonl").read_text().splitlines()]
    for item in tests:
        wave, rate = sf.read(item["audio"], dtype="float32")
        assert wave.size / rate >= 120.0
        for part in wave.reshape(len(item["order"]), -1):
            assert (part**2).mean() > 1e-4
    assert long["conversations"] == {"stage1": 6, "stage2": 12}

    # Stage 1: the encoder is the AF-CLAP export, frozen; only the gated cross-attention blocks train.
    encoder = clapkit.load(str(out / "afclap" / "model")).state_dict()
    ckpt = torch.load(out / "xattn_stage1" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["state_dict"] and all(k.startswith("model.projector.") for k in ckpt["state_dict"])
    assert any(".xattn" in k or "gate" in k for k in ckpt["state_dict"])
    ckpt2 = torch.load(out / "xattn_stage2" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert any("lora_" in k for k in ckpt2["state_dict"])  # stage 2 adds LoRA
    model = clapkit.lalm.load(str(out / "xattn_stage2" / "model")).eval()
    assert model.config.projector == "xattn"
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder.items())
    # Sliding windows: a two-minute recording becomes 120 windows of the encoder's 1 s clip, all of them encoded.
    wave, rate = sf.read(tests[0]["audio"], dtype="float32")
    with torch.inference_mode():
        feats, mask = model.encode_audio(torch.from_numpy(wave)[None], torch.tensor([wave.size]))
    frames = 120 * model.audio_frames_per_window() // 2  # the xattn media keys: frames downsampled by 2
    assert feats.shape[1] == frames and int(mask.sum()) == frames
    assert not torch.allclose(feats[0, : frames // 3].mean(0), feats[0, -frames // 3 :].mean(0))  # other sounds
    stage_weights = {s: load_file(out / s / "model" / "projector.safetensors") for s in LALM_STAGES}
    assert any(
        not stage_weights["xattn_stage1"][k].equal(stage_weights["xattn_stage2"][k])
        for k in stage_weights["xattn_stage1"]
    )

    # Evaluation: both stages answered both questions on every held-out recording.
    for stage in LALM_STAGES:
        row = results["lalm"][stage]
        assert row["windows"] == [120] * len(tests) and row["encoder_window_seconds"] == 1.0
        assert row["first"]["n"] == row["last"]["n"] == len(tests)
    assert set(QUESTIONS) == {"first", "last"} and "windows / recording" in (out / "results.md").read_text()
