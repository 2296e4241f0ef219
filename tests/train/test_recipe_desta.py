"""``python -m train recipe desta --scale tiny``: SmolLM2 writes the training targets from clip metadata, the adapter
alone trains, the LLM (and with it the text QA scores) stays the base's; a kill between stages resumes at the first
unfinished stage."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from clapkit.lalm.evaluate import normalize_text
from clapkit.lalm.selflabel import describe_metadata
from clapkit.steps import DONE
from tests.train.conftest import run_train, wait_for
from train.recipes.desta import MODELS

QUESTION = "<Audio>\nWhat can you hear from the audio?"  # configs/recipes/desta/tiny.yaml


def _samples(folder: Path) -> list[dict]:
    """Each sample's metadata, with the names of its members, from the shards of ``folder``."""
    samples: dict[str, dict] = {}
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                sample = samples.setdefault(key, {"members": []})
                sample["members"].append(ext)
                if ext == "json":
                    sample.update(json.loads(tar.extractfile(member).read()))
    return list(samples.values())


def test_desta_tiny_self_labels_trains_the_adapter_only_and_resumes_after_a_kill(tmp_path, smollm2_folder):
    from clapkit.lalm import load
    from clapkit.lalm.io import load_llm
    from train.lalm import build_lalm

    out = tmp_path / "desta"
    args = ["recipe", "desta", "--scale", "tiny", "--out", str(out), "--quiet"]
    args += ["--set", f"stages.stage2.set.model.model.init_args.llm={smollm2_folder}"]
    first = run_train(args, cwd=tmp_path)
    wait_for(out / "self_label" / DONE, first)
    first.kill()  # between stages: the targets are written, the training has not finished
    first.communicate()
    assert not (out / "stage2" / DONE).exists() and not (out / "results.json").exists()
    finished = {s: (out / s / DONE).stat().st_mtime_ns for s in ("data", "self_label")}

    second = run_train(args, cwd=tmp_path)
    log, _ = second.communicate(timeout=600)
    assert second.returncode == 0, log
    for stage, mtime in finished.items():  # finished stages are reused, not redone
        assert f"[{stage}] reused ({out / stage})" in log
        assert (out / stage / DONE).stat().st_mtime_ns == mtime
    assert (out / "stage2" / DONE).is_file() and (out / "evaluate" / DONE).is_file()

    # The data: the training clips with the metadata the LLM is shown (caption, class name, duration).
    data = json.loads((out / "data" / DONE).read_text())["result"]
    assert data["clips"] == 6 * 3 and data["test_clips"] == 6 * 2 and data["classes"] == 6
    clips = _samples(out / "data" / "clips")
    assert len(clips) == 18 and all(c["captions"] and c["labels"] and c["duration"] > 0 for c in clips)

    # Self-labelling: every training clip became a conversation whose assistant turn the LLM wrote from the
    # metadata — not the metadata, nor its caption, copied — and the audio travelled with it.
    labelled = _samples(out / "self_label" / "shards")
    assert len(labelled) == len(clips)
    assert sorted(c["source"] for c in labelled) == sorted(c["source"] for c in clips)
    answers = []
    for sample in labelled:
        user, assistant = sample["conversation"]
        assert user == {"role": "user", "content": QUESTION}
        answer = assistant["content"]
        assert assistant["role"] == "assistant" and answer.strip()
        assert answer != describe_metadata(sample) and answer not in sample["captions"]
        assert "Sound labels:" not in answer and "Captions:" not in answer
        assert "flac" in sample["members"]
        answers.append(answer)
    assert len(set(answers)) >= 6  # written per clip (per class at least), not one fixed reply
    targets = json.loads((out / "self_label" / DONE).read_text())["result"]["targets"]
    aliases = data["aliases"]
    mentions = [
        any(
            f" {normalize_text(n)} " in f" {normalize_text(s['conversation'][1]['content'])} "
            for n in aliases[s["class"]]
        )
        for s in labelled
    ]
    assert targets["n"] == 18 and targets["mentions_class"] == pytest.approx(sum(mentions) / 18)
    assert 0.5 < targets["names_class"] <= targets["mentions_class"]  # the class labels reached the LLM
    assert (out / "self_label" / "examples.txt").read_text().count(f"Q: {QUESTION}\nA: ") == 5

    # Training: the adapter only (DeSTA2), on the self-labelled conversations.
    config = yaml.safe_load((out / "stage2" / "config.yaml").read_text())
    assert config["model"]["stage"] == 1 and config["data"]["stage1_shards"] == str(out / "self_label" / "shards")
    saved = json.loads((out / "stage2" / "model" / "lalm_config.json").read_text())
    assert not saved["config"]["llm_finetuned"] and "llm" not in saved["parts"] and "lora" not in saved["parts"]
    checkpoint = torch.load(out / "stage2" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert checkpoint["state_dict"] and all(k.startswith("model.projector.") for k in checkpoint["state_dict"])
    trained = load(out / "stage2" / "model")
    base_llm, _ = load_llm(smollm2_folder)
    base_state, tuned_state = base_llm.state_dict(), trained.llm.state_dict()
    assert base_state.keys() == tuned_state.keys()
    for key, tensor in base_state.items():  # the embeddings gained the two <Audio> rows, the rest is the base's
        assert torch.equal(tuned_state[key][: tensor.shape[0]], tensor), key
    start = build_lalm(**config["model"]["model"]["init_args"]).projector.state_dict()
    moved = load_file(out / "stage2" / "model" / "projector.safetensors")
    assert moved.keys() == start.keys() and any(not moved[k].equal(start[k]) for k in moved)

    # Evaluation: both models scored; with the LLM frozen the text QA scores are the base's exactly.
    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == list(MODELS)
    base, tuned = (results["models"][m] for m in MODELS)
    assert base["text_qa"]["num_items"] == 16 and base["text_qa"]["accuracy"] > base["text_qa"]["chance"]
    assert tuned["text_qa"]["accuracy"] == base["text_qa"]["accuracy"] and tuned["text_qa"]["agreement"] == 1.0
    assert tuned["text_qa"]["kl_to_reference"] == pytest.approx(0.0, abs=1e-9)
    assert tuned["changed"]["llm_tensors"] == 0 and tuned["changed"]["projector_tensors"] > 0
    for m in (base, tuned):
        assert m["audio_label"]["n"] == 12 and 0 <= m["audio_label"]["accuracy"] <= 1
    assert results["targets"] == targets and results["chance"]["audio_label"] == pytest.approx(1 / 6)
    for tag in ("base", "trained"):
        predictions = (out / "evaluate" / f"predictions_{tag}.jsonl").read_text().splitlines()
        assert len(predictions) == 12 and {json.loads(p)["kind"] for p in predictions} == {"label"}
    table = (out / "results.md").read_text()
    assert all(m in table for m in MODELS) and "KL to base" in table and "Self-labelled targets (18)" in table
