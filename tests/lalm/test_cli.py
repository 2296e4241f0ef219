"""``clapkit lalm eval`` and ``clapkit lalm self-label``."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from clapkit.cli import main
from tests.lalm.conftest import make_lalm, make_llm, make_tokenizer, tone

RATE = 16000


@pytest.mark.parametrize("command", [["lalm"], ["lalm", "eval"], ["lalm", "self-label"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: clapkit lalm" in capsys.readouterr().out


def test_eval_scores_saved_predictions(tmp_path, capsys):
    records = [
        {"kind": "mc", "prediction": "(B)", "answer": "rain", "choices": ["dog", "rain"]},
        {"kind": "mc", "prediction": "a dog", "answer": "rain", "choices": ["dog", "rain"]},
        {"kind": "asr", "prediction": "hello word", "answer": "hello world"},
    ]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["lalm", "eval", "--predictions", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert metrics["mc"]["accuracy"] == 0.5 and metrics["asr"]["wer"] == 0.5
    assert "mc: accuracy=0.5000" in capsys.readouterr().out


def test_eval_runs_a_saved_model(tmp_path):
    model = make_lalm("linear")
    model.save_pretrained(tmp_path / "adapter")
    sf.write(tmp_path / "a.wav", tone(440, 0.5).numpy(), RATE)
    line = {
        "audio": "a.wav",
        "kind": "label",
        "conversation": [{"role": "user", "content": "<Audio> What is it?"}, {"role": "assistant", "content": "tone"}],
    }
    (tmp_path / "c.jsonl").write_text(json.dumps(line) + "\n")
    args = ["lalm", "eval", "--model", str(tmp_path / "adapter"), "--data", str(tmp_path / "c.jsonl"),
            "--max-new-tokens", "3", "--out", str(tmp_path / "m.json"),
            "--save-predictions", str(tmp_path / "p.jsonl")]  # fmt: skip
    assert main(args) == 0
    assert json.loads((tmp_path / "m.json").read_text())["metrics"]["label"]["n"] == 1
    (record,) = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert record["answer"] == "tone" and isinstance(record["prediction"], str)


def test_eval_without_inputs_is_an_error(capsys):
    assert main(["lalm", "eval"]) == 2
    assert "--predictions" in capsys.readouterr().err


def test_self_label_with_a_folder_llm(tmp_path):
    tokenizer = make_tokenizer()
    make_llm(tokenizer).save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    sf.write(tmp_path / "a.wav", tone(440, 0.5).numpy(), RATE)
    rows = [{"audio": "a.wav", "labels": ["tone"]}, {"audio": "a.wav", "captions": ["a beep"]}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["lalm", "self-label", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out.jsonl"),
            "--llm", str(tmp_path / "llm"), "--max-new-tokens", "4"]  # fmt: skip
    assert main(args) == 0
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(out) == 2
    assert all(r["conversation"][0]["content"].startswith("<Audio>\n") for r in out)
