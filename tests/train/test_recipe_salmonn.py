"""``python -m train recipe salmonn``: spoken sentences and sound clips through a window Q-Former, stage 1 training the
Q-Former alone and stage 2 adding LoRA, WER against the sentences that were spoken; resumed after a kill."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import load_file

from clapkit.lalm import build_projector
from clapkit.lalm.evaluate import normalize_text, wer
from clapkit.steps import DONE
from clapkit.tts import Synthesizer, Utterance
from tests.train.conftest import run_train, wait_for
from train.lalm import build_llm
from train.recipes.lalm_data import DESCRIBE, QUESTION
from train.recipes.salmonn import TRANSCRIBE, make_sentences

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng speaks the ASR sentences (make venv installs it)"
)


def _word_edits(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words) after normalisation: the WER's parts by hand."""
    ref, hyp = normalize_text(reference).split(), normalize_text(hypothesis).split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _conversations(folder: Path) -> list[list[dict[str, str]]]:
    out = []
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    out.append(json.loads(tar.extractfile(member).read())["conversation"])
    return out


def test_wer_is_word_edits_over_reference_words():
    assert wer(["seven red cat"], ["Seven, red dog!"]) == pytest.approx(1 / 3)  # one substitution
    assert wer(["up big two small", "go"], ["Two.", "go go"]) == pytest.approx((3 + 1) / (4 + 1))
    assert wer(["green off zero"], ["green off zero"]) == 0.0
    train, test = make_sentences(["one", "two", "three", "red"], 6, 3, [2, 3], seed=0)
    assert len(set(train)) == 6 and len(set(test)) == 3 and not set(train) & set(test)
    assert {w for s in test for w in s.split()} <= {w for s in train for w in s.split()}
    with pytest.raises(ValueError, match="distinct sentences"):
        make_sentences(["one"], 3, 1, [1, 1], seed=0)


@needs_espeak
def test_salmonn_tiny_trains_qformer_then_lora_scores_wer_and_resumes_after_a_kill(tmp_path):
    out = tmp_path / "salmonn"
    args = ["recipe", "salmonn", "--scale", "tiny", "--out", str(out), "--quiet"]
    first = run_train(args, cwd=tmp_path)
    wait_for(out / "stage1" / DONE, first, timeout=300)
    first.kill()  # between stages
    first.communicate()
    assert not (out / "stage2" / DONE).exists() and not (out / "results.json").exists()
    finished = {s: (out / s / DONE).stat().st_mtime_ns for s in ("data", "stage1")}
    second = run_train(args, cwd=tmp_path)
    log, _ = second.communicate(timeout=600)
    assert second.returncode == 0, log
    for stage, mtime in finished.items():  # reused, not redone; the run goes on at stage 2
        assert f"[{stage}] reused ({out / stage})" in log and (out / stage / DONE).stat().st_mtime_ns == mtime
    assert "[stage2]" in log and (out / "stage2" / DONE).is_file() and (out / "evaluate" / DONE).is_file()

    # Data: held-out sentences over the training words; stage 1 aligns (transcribe / describe), stage 2 instructs
    # (transcribe / what sound); the transcription targets are the training sentences, each spoken twice.
    data = json.loads((out / "data" / DONE).read_text())["result"]
    speech = data["speech"]
    train_text, test_text = speech["train_sentences"], speech["test_sentences"]
    assert len(train_text) == 16 and len(test_text) == 4 and not set(train_text) & set(test_text)
    assert {w for s in test_text for w in s.split()} <= {w for s in train_text for w in s.split()}
    assert {w for s in train_text for w in s.split()} <= set(speech["vocabulary"])
    for stage, sound_question in (("stage1", DESCRIBE), ("stage2", QUESTION)):
        convs = _conversations(Path(data[f"{stage}_shards"]))
        assert len(convs) == data["conversations"][stage] == 16 * 2 + 6 * 4
        assert {c[0]["content"] for c in convs} == {TRANSCRIBE, sound_question}
        targets = [normalize_text(c[1]["content"]) for c in convs if c[0]["content"] == TRANSCRIBE]
        assert sorted(targets) == sorted(train_text * 2)

    # The held-out speech clips are the sentences spoken: audible, as long as their words at their speed, and equal
    # to espeak-ng's rendering of the listed text, voice and speed.
    clips = _jsonl(Path(data["speech_test"]))
    assert [c["text"] for c in clips] == [s for s in test_text for _ in range(2)]
    assert {c["voice"] for c in clips} == {"en-us", "en-gb", "en-gb-scotland"} and len({c["rate"] for c in clips}) > 1
    for c in clips:
        wave, rate = sf.read(c["audio"], dtype="float32")
        assert rate == 16000 and len(wave) / rate == pytest.approx(c["seconds"])
        assert np.sqrt(np.mean(wave**2)) > 0.02 and np.abs(wave).max() > 0.2
        per_word = c["seconds"] * c["rate"] / len(c["text"].split())  # espeak-ng: 175 words per minute = 0.34 s
        assert 0.25 < per_word < 0.6, c
    again = Synthesizer("espeak-ng").render(Utterance(clips[1]["text"], clips[1]["voice"], clips[1]["rate"]), 16000)
    assert np.abs(again.numpy() - sf.read(clips[1]["audio"], dtype="float32")[0]).max() < 1e-3  # 16-bit WAV

    # Stage 1 trains the Q-Former alone: its checkpoint holds exactly the projector's parameters, moved a little from
    # their seeded start; the LLM (the tiny random Llama, saved with the model since it has no name to load it by)
    # keeps the weights it was built with, and no LoRA is saved.
    cfg = {s: json.loads((out / s / "model" / "lalm_config.json").read_text()) for s in ("stage1", "stage2")}
    for c in cfg.values():
        assert c["config"]["projector"] == "qformer" and c["config"]["projector_params"]["window"] == 5
        assert not c["config"]["llm_finetuned"] and c["parts"]["llm"] == "llm"
    assert "lora" not in cfg["stage1"]["parts"] and not (out / "stage1" / "model" / "lora").exists()
    spec = yaml.safe_load((out / "stage1" / "config.yaml").read_text())["model"]["model"]["init_args"]["llm"]
    base = build_llm(spec)[0].state_dict()
    llms = {s: load_file(out / s / "model" / "llm" / "model.safetensors") for s in ("stage1", "stage2")}
    assert llms["stage1"].keys() == base.keys()
    for key, value in base.items():  # the two rows past the vocabulary are the <Audio> / </Audio> embeddings
        assert llms["stage1"][key][: len(value)].equal(value) and llms["stage2"][key].equal(llms["stage1"][key]), key
    torch.manual_seed(0)  # build_lalm seeds the projector with its seed (0) right before building it
    start = build_projector("qformer", 64, 32, num_layers=2, **cfg["stage1"]["config"]["projector_params"]).state_dict()
    ckpt1 = torch.load(out / "stage1" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert set(ckpt1) == {f"model.projector.{k}" for k in start}
    qformer = {s: load_file(out / s / "model" / "projector.safetensors") for s in ("stage1", "stage2")}
    assert qformer["stage1"].keys() == start.keys()
    moved = [float((qformer["stage1"][k] - v).abs().max()) for k, v in start.items()]
    assert 0 < max(moved) < 0.01  # 4 Adam steps at lr 1e-3 from that start

    # Stage 2 starts from stage 1's model and adds LoRA: its checkpoint holds the Q-Former and the LoRA factors only;
    # both move (LoRA's B factors start at zero), while the LLM's own weights (above) and the frozen encoder stay.
    assert "lora" in cfg["stage2"]["parts"]
    stage2_cfg = yaml.safe_load((out / "stage2" / "config.yaml").read_text())
    assert stage2_cfg["model"]["model"]["init_args"]["directory"] == str(out / "stage1" / "model")
    assert stage2_cfg["data"]["stage2_shards"] == data["stage2_shards"] and stage2_cfg["model"]["lora"]["r"] == 8
    ckpt2 = torch.load(out / "stage2" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    lora_keys = {k for k in ckpt2 if ".lora_A." in k or ".lora_B." in k}
    assert lora_keys and set(ckpt2) == set(ckpt1) | lora_keys
    assert any(not qformer["stage1"][k].equal(qformer["stage2"][k]) for k in qformer["stage1"])
    lora = load_file(out / "stage2" / "model" / "lora" / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)
    encoders = [load_file(next((out / s / "model" / "encoder").glob("*.safetensors"))) for s in ("stage1", "stage2")]
    assert all(encoders[0][k].equal(encoders[1][k]) for k in encoders[0])

    # Evaluation: WER and sound accuracy for both models; the WER is word edits against the spoken sentences.
    results = json.loads((out / "results.json").read_text())
    sounds = _jsonl(Path(data["sound_test"]))
    assert results["speech_clips"] == len(clips) == 8 and results["sound_clips"] == len(sounds) == 6
    for name in ("stage1", "stage2"):
        m = results["models"][name]
        assert m["asr"]["n"] == 8 and m["sound"]["n"] == 6 and 0 <= m["sound"]["accuracy"] <= 1
        records = [
            json.loads(line) for line in (out / "evaluate" / f"predictions_{name}.jsonl").read_text().splitlines()
        ]
        heard = [r for r in records if "reference" in r]
        assert [(r["audio"], r["reference"]) for r in heard] == [(c["audio"], c["text"]) for c in clips]
        edits = [_word_edits(r["reference"], r["prediction"]) for r in heard]
        assert m["asr"]["wer"] == pytest.approx(sum(e for e, _ in edits) / sum(n for _, n in edits))
        assert [r["wer"] for r in heard] == pytest.approx([e / n for e, n in edits])
        assert wer([r["reference"] for r in heard], [r["reference"] for r in heard]) == 0.0
        named = [r for r in records if "label" in r]
        assert [r["label"] for r in named] == [s["label"] for s in sounds]
        assert m["sound"]["accuracy"] == pytest.approx(np.mean([r["named"] == r["label"] for r in named]))
    assert results["models"]["stage1"]["trained"] == "Q-Former"
    assert results["models"]["stage2"]["trained"] == "Q-Former + LoRA"
    table = (out / "results.md").read_text()
    assert "speech WER %" in table and "sound acc %" in table and "Q-Former + LoRA" in table
