"""LLaSO-style JSON → conversation records and shards: the three layouts, abstention labels, bad entries."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from clapkit.cli import main as cli_main
from clapkit.lalm.data import ConversationReader
from clapkit.lalm.llaso import read_llaso
from tests.conftest import TINY_RATE, tone


@pytest.fixture
def llaso_file(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    for name, freq in (("dog", 300), ("said", 600), ("asked", 900)):
        sf.write(clips / f"{name}.wav", tone(freq, 0.5, TINY_RATE), TINY_RATE)
    entries = [
        {  # text instruction + audio input (layout inferred)
            "id": "ta-1",
            "conversations": [
                {"from": "human", "value": "What sound is this?\n<audio>"},
                {"from": "gpt", "value": "A dog."},
            ],
            "audio": "clips/dog.wav",
            "task": "label",
        },
        {  # spoken instruction + written input, named
            "id": "at-1",
            "conversations": [{"from": "human", "value": "<speech>\nFrance"}, {"from": "gpt", "value": "Paris."}],
            "voice": "clips/asked.wav",
            "modality": "AT",
        },
        {  # pure audio, two clips (instruction, input); the question cannot be answered from the input
            "id": "aa-1",
            "conversations": [{"from": "human", "value": "<audio><audio>"}, {"from": "gpt", "value": "I cannot tell."}],
            "audios": ["clips/asked.wav", "clips/dog.wav"],
            "answerable": False,
        },
        {"id": "bad-1", "conversations": [{"from": "human", "value": "<audio>"}, {"from": "gpt", "value": "x"}],
         "audio": ["clips/dog.wav", "clips/said.wav"]},  # two clips, one marker
        {"id": "bad-2", "conversations": [{"from": "human", "value": "<audio> hi"}, {"from": "gpt", "value": "x"}],
         "audio": "clips/missing.wav"},
        {"id": "bad-3", "conversations": [{"from": "human", "value": "<audio> hi"}, {"from": "gpt", "value": "x"}],
         "audio": "clips/dog.wav", "layout": "video_text"},
        {"id": "bad-4", "conversations": [{"from": "human", "value": "<audio> hi"}], "audio": "clips/dog.wav"},
    ]  # fmt: skip
    path = tmp_path / "llaso.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in entries) + "{not json\n")
    return path


def test_layouts_answerability_and_skips(llaso_file) -> None:
    records, report = read_llaso(llaso_file)
    assert [r.fields["id"] for r in records] == ["ta-1", "at-1", "aa-1"]
    assert [r.fields["layout"] for r in records] == ["text_audio", "audio_text", "pure_audio"]
    assert [r.fields["answerable"] for r in records] == [True, True, False]
    assert records[1].fields["conversation"][0] == {"role": "user", "content": "<Audio>\nFrance"}
    assert records[2].audio.endswith("asked.wav") and records[2].fields["extra_audio"][0].endswith("dog.wav")
    assert records[0].fields["task"] == "label" and "extra_audio" not in records[0].fields
    info = report.to_dict()
    assert info["layouts"] == {"text_audio": 1, "audio_text": 1, "pure_audio": 1}
    assert info["answerable"] == {"true": 2, "false": 1}
    assert info["skipped"] == {
        "1 audio markers but 2 clips": 1,
        f"missing clip {llaso_file.parent / 'clips' / 'missing.wav'}": 1,
        "unknown layout 'video_text' (one of audio_text, pure_audio, text_audio)": 1,
        "the conversation does not end with an answer": 1,
        "not JSON (Expecting property name enclosed in double quotes)": 1,
    }
    assert f"{llaso_file}:8: not JSON" in " ".join(info["examples"])


def test_cli_writes_shards_the_reader_reads(llaso_file, tmp_path, capsys) -> None:
    out = tmp_path / "shards"
    code = cli_main(["lalm", "convert-llaso", str(llaso_file), "--out", str(out), "--sample-rate", str(TINY_RATE)])
    printed = capsys.readouterr().out
    assert code == 0 and "3 conversations" in printed and "skipped 5" in printed
    samples = list(ConversationReader(out, TINY_RATE, train=False).samples())
    assert [len(s.audio) for s in samples] == [1, 1, 2]
    assert [s.meta["layout"] for s in samples] == ["text_audio", "audio_text", "pure_audio"]
    assert samples[2].meta["answerable"] is False and samples[2].messages[-1]["content"] == "I cannot tell."
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    assert cli_main(["lalm", "convert-llaso", str(empty), "--out", str(tmp_path / "none")]) == 2
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        read_llaso(broken)
