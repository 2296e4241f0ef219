"""DeSTA self-labelling: prompts from metadata, conversations out, shards and JSONL round trips."""

from __future__ import annotations

import json
import tarfile

import pytest
import soundfile as sf

import clapkit.lalm.selflabel as selflabel
from clapkit.data.inputs import InputRecord
from clapkit.data.schema import load_manifest
from clapkit.data.writer import WriterConfig, write_shards
from clapkit.lalm import ConversationReader, chat_generate
from clapkit.lalm.selflabel import SelfLabeler, describe_metadata, self_label_jsonl, self_label_shards
from tests.lalm.conftest import make_llm, make_tokenizer, tone

RATE = 16000


@pytest.fixture
def fake_llm(monkeypatch):
    """Replace generation with an answer built from the prompt, and record the prompts."""
    prompts = []

    def answer(llm, tokenizer, conversations, **kwargs):
        prompts.extend(c[0]["content"] for c in conversations)
        return ["I hear " + c[0]["content"].split("Sound labels: ")[1].split("\n")[0] + "." for c in conversations]

    monkeypatch.setattr(selflabel, "chat_generate", answer)
    return prompts


def test_describe_metadata():
    meta = {"captions": ["a dog barks", "barking"], "labels": ["dog"], "transcript": " hi ", "duration": 2.345}
    assert describe_metadata(meta) == (
        'Captions: a dog barks | barking\nSound labels: dog\nSpeech transcript: "hi"\nDuration: 2.3 s'
    )
    assert describe_metadata({"duration": 3.0, "source": "x.wav"}) == ""


def test_labeler_builds_conversations_and_skips_empty_metadata(fake_llm):
    labeler = SelfLabeler(None, None, questions=["Q1?", "Q2?", "Q3?"], seed=3)
    out = labeler.label([("a", {"labels": ["dog"], "captions": ["a dog"]}), ("b", {}), ("c", {"labels": ["rain"]})])
    assert out[1] is None
    assert out[0] == [
        {"role": "user", "content": f"<Audio>\n{labeler.question('a')}"},
        {"role": "assistant", "content": "I hear dog."},
    ]
    assert out[2][1]["content"] == "I hear rain."
    assert len(fake_llm) == 2 and "Captions: a dog" in fake_llm[0] and labeler.question("a") in fake_llm[0]
    assert labeler.question("a") == SelfLabeler(None, None, questions=["Q1?", "Q2?", "Q3?"], seed=3).question("a")
    assert len({labeler.question(str(k)) for k in range(50)}) == 3  # every question gets used
    with pytest.raises(ValueError, match="placeholders"):
        SelfLabeler(None, None, prompt="no slots")


def test_self_label_shards_keeps_audio_and_adds_conversations(tmp_path, fake_llm):
    records = []
    for i, label in enumerate(["dog", "rain", "bell"]):
        path = tmp_path / f"{label}.wav"
        sf.write(path, tone(300 + 50 * i, 0.5).numpy(), RATE)
        records.append(InputRecord(str(path), {"captions": [f"a {label}"], "labels": [label]}, label))
    write_shards(records, tmp_path / "in", WriterConfig(sample_rate=RATE), progress=False)
    manifest = self_label_shards(SelfLabeler(None, None), tmp_path / "in", tmp_path / "out", batch_size=2,
                                 progress=False)  # fmt: skip
    assert manifest.total == 3 and manifest.skipped == 0 and manifest.complete
    assert load_manifest(tmp_path / "out").total == 3
    samples = list(ConversationReader(tmp_path / "out", RATE, train=False))
    assert [s.messages[1]["content"] for s in samples] == ["I hear dog.", "I hear rain.", "I hear bell."]
    assert samples[0].meta["labels"] == ["dog"]

    def flac_members(folder):
        out = {}
        for shard in sorted(folder.glob("*.tar")):
            with tarfile.open(shard) as tar:
                out.update({m.name: tar.extractfile(m).read() for m in tar if m.name.endswith(".flac")})
        return out

    assert flac_members(tmp_path / "out") == flac_members(tmp_path / "in")  # audio copied byte for byte


def test_self_label_jsonl(tmp_path, fake_llm):
    sf.write(tmp_path / "a.wav", tone(440, 0.5).numpy(), RATE)
    lines = [{"audio": "a.wav", "labels": ["tone"]}, {"audio": "a.wav"}, {"audio": "a.wav", "labels": 5}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    stats = self_label_jsonl(SelfLabeler(None, None), tmp_path / "in.jsonl", tmp_path / "out.jsonl", progress=False)
    assert stats == {"labelled": 1, "skipped": 2}
    (row,) = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert row["audio"] == str(tmp_path / "a.wav")
    assert row["conversation"][1] == {"role": "assistant", "content": "I hear tone."}


def test_chat_generate_with_a_real_tiny_llm():
    tokenizer = make_tokenizer()
    llm = make_llm(tokenizer)
    conversations = [[{"role": "user", "content": "What is rain?"}], [{"role": "user", "content": "Hi"}]]
    first = chat_generate(llm, tokenizer, conversations, max_new_tokens=4)
    assert len(first) == 2 and all(isinstance(t, str) for t in first)
    assert first == chat_generate(llm, tokenizer, conversations, max_new_tokens=4)  # greedy
    assert "<Audio>" not in tokenizer.get_vocab()  # text-only use leaves the tokenizer alone
