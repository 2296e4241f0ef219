"""``python -m train recipe llaso``: LLaSO-style JSON in three layouts through the converter, both stages, and accuracy
and abstention per layout; resumes after a kill between stages."""

from __future__ import annotations

import json
import shutil

import pytest

from clapkit.steps import DONE
from tests.train.conftest import run_train, wait_for


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng speaks the instructions (make venv installs it)"
)
def test_llaso_tiny_converts_three_layouts_trains_both_stages_and_scores_abstention(tmp_path, smollm2_folder):
    from clapkit.lalm.llaso import read_llaso

    out = tmp_path / "llaso"
    args = ["recipe", "llaso", "--scale", "tiny", "--out", str(out), "--quiet"]
    # SmolLM2 as a saved folder (the same weights as `llm: smollm2`): each of the recipe's loads takes ~1 s, not ~15.
    args += ["--set", f"stages.stage1.set.model.model.init_args.llm={smollm2_folder}"]
    first = run_train(args, cwd=tmp_path)
    wait_for(out / "stage1" / DONE, first, timeout=300)
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
