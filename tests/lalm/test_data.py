"""Conversation shards and JSONL, collation, replay mixing."""

from __future__ import annotations

import io
import json
from itertools import islice

import pytest
import soundfile as sf
import torch
import webdataset as wds

from clapkit.data.inputs import InputRecord, read_jsonl
from clapkit.data.reader import ReaderStats
from clapkit.data.writer import WriterConfig, write_shards
from clapkit.lalm import IGNORE_INDEX, ConversationReader, ConversationSample, read_conversation_jsonl, replay_mix
from tests.lalm.conftest import make_lalm, tone

RATE = 16000


def _conversation(answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": "<Audio>\nWhat sound is this?"}, {"role": "assistant", "content": answer}]


def _flac(seconds: float, freq: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tone(freq, seconds).numpy(), RATE, format="FLAC")
    return buf.getvalue()


def test_shards_written_by_clapkit_shards_are_read_as_conversations(tmp_path):
    records = []
    for i, (answer, seconds) in enumerate([("A dog.", 0.5), ("Rain.", 1.25), ("A bell.", 0.75)]):
        path = tmp_path / f"clip{i}.wav"
        sf.write(path, tone(300 + 100 * i, seconds).numpy(), RATE)
        records.append(InputRecord(str(path), {"conversation": _conversation(answer), "labels": ["x"]}, f"clip{i}"))
    write_shards(records, tmp_path / "shards", WriterConfig(sample_rate=RATE, require_captions=False), progress=False)

    model = make_lalm("linear")
    stats = ReaderStats()
    reader = ConversationReader(tmp_path / "shards", RATE, collator=model.collator(), batch_size=2, train=False,
                                stats=stats)  # fmt: skip
    batches = list(reader)
    assert [len(b["keys"]) for b in batches] == [2, 1]
    first = batches[0]
    assert first["audio_lengths"].tolist() == [8000, 20000]
    assert first["audio"].shape == (2, 20000)
    assert first["meta"][0]["labels"] == ["x"] and "conversation" not in first["meta"][0]
    answers = [model.tokenizer.decode([t for t in row.tolist() if t != IGNORE_INDEX]) for row in first["labels"]]
    assert answers == ["A dog.<|im_end|>\n", "Rain.<|im_end|>\n"]
    assert stats.as_dict()["samples"] == 3 and stats.skipped == 0
    assert model.step(first).loss.item() > 0


def test_multi_clip_text_only_and_bad_samples(tmp_path):
    path = str(tmp_path / "conv-000000.tar")
    with wds.TarWriter(path) as tar:
        two = [{"role": "user", "content": "<Audio> or <Audio>?"}, {"role": "assistant", "content": "The first."}]
        tar.write({"__key__": "two", "flac": _flac(0.5, 300), "1.flac": _flac(0.25, 600),
                   "json": json.dumps({"conversation": two}).encode()})  # fmt: skip
        text = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
        tar.write({"__key__": "text", "json": json.dumps({"conversation": text}).encode()})
        tar.write({"__key__": "nochat", "flac": _flac(0.5, 300), "json": json.dumps({"captions": ["x"]}).encode()})
        tar.write({"__key__": "mismatch", "flac": _flac(0.5, 300), "json": json.dumps({"conversation": two}).encode()})
        tar.write({"__key__": "noise", "flac": b"not audio", "json": json.dumps({"conversation": text}).encode()})
    stats = ReaderStats()
    samples = list(ConversationReader(path, RATE, train=False, stats=stats))
    assert [s.key for s in samples] == ["two", "text"]
    assert [a.shape[0] for a in samples[0].audio] == [8000, 4000]  # clip order follows the member numbers
    assert samples[1].audio == []
    counts = stats.as_dict()
    assert counts["samples"] == 2 and counts["skipped_metadata"] == 2 and counts["skipped_audio"] == 1

    model = make_lalm("linear")
    batch = model.collator()(samples)
    assert batch["audio"].shape == (2, 8000) and batch["audio_lengths"].tolist() == [8000, 4000]
    assert model.step(batch).logits.shape[0] == 2


def test_read_conversation_jsonl_and_max_audio_seconds(tmp_path):
    sf.write(tmp_path / "a.wav", tone(440, 2.0).numpy(), RATE)
    lines = [
        {"audio": "a.wav", "conversation": _conversation("A tone."), "task": "label"},
        {"conversation": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
    ]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    samples = list(read_conversation_jsonl(tmp_path / "c.jsonl", RATE))
    assert samples[0].audio[0].shape == (32000,) and samples[0].meta == {"task": "label"}
    assert samples[1].audio == []
    model = make_lalm("linear")
    model.config.max_audio_seconds = 0.5
    batch = model.collator(generation=True)(samples)
    assert batch["audio_lengths"].tolist() == [8000]
    assert batch["references"] == ["A tone.", "Hello."]
    (tmp_path / "bad.jsonl").write_text('{"audio": "a.wav"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        list(read_conversation_jsonl(tmp_path / "bad.jsonl", RATE))


def test_conversation_sample_prompt_split():
    sample = ConversationSample("k", _conversation("Rain."), [torch.zeros(10)])
    assert sample.prompt() == (_conversation("Rain.")[:1], "Rain.")
    open_ended = ConversationSample("k", _conversation("Rain.")[:1], [torch.zeros(10)])
    assert open_ended.prompt()[1] is None


def test_replay_mix_ratio_is_seeded_and_follows_the_primary_stream():
    primary = [("new", i) for i in range(3000)]
    replay = [("old", i) for i in range(7)]  # short: cycled
    mixed = list(replay_mix(primary, [replay], 0.25, seed=1))
    assert [x for x in mixed if x[0] == "new"] == primary  # primary order kept, and it ends the stream
    share = sum(x[0] == "old" for x in mixed) / len(mixed)
    assert abs(share - 0.25) < 0.03
    assert mixed == list(replay_mix(primary, [replay], 0.25, seed=1))
    assert mixed != list(replay_mix(primary, [replay], 0.25, seed=2))
    two = list(islice(replay_mix(primary, [replay, [("text", 0)]], [0.2, 0.1], seed=0), 2000))
    assert abs(sum(x[0] == "text" for x in two) / 2000 - 0.1) < 0.03
    with pytest.raises(ValueError, match="summing below 1"):
        next(replay_mix(primary, [replay], 1.0))
    with pytest.raises(ValueError, match="replay stream 0 is empty"):
        list(replay_mix(primary, [[]], 0.5))


def test_multi_clip_jsonl_through_the_shard_writer(tmp_path):
    for name, seconds in (("a", 0.5), ("b", 1.25), ("c", 0.75)):
        sf.write(tmp_path / f"{name}.wav", tone(300, seconds).numpy(), RATE)
    two = [{"role": "user", "content": "<Audio> then <Audio>: which is longer?"},
           {"role": "assistant", "content": "The second."}]  # fmt: skip
    lines = [
        {"audio": ["a.wav", "b.wav"], "conversation": two},
        {"audio": "c.wav", "conversation": _conversation("A tone.")},
        {"audio": ["a.wav", "missing.wav"], "conversation": two},  # unreadable second clip: skipped, reported
        {"audio": [], "conversation": two},
    ]
    listing = tmp_path / "conversations.jsonl"
    listing.write_text("".join(json.dumps(line) + "\n" for line in lines))
    records = read_jsonl(listing)
    assert records[0].fields["extra_audio"] == [str(tmp_path / "b.wav")] and records[3].error
    config = WriterConfig(sample_rate=RATE, require_captions=False)
    manifest = write_shards(records, tmp_path / "shards", config, progress=False)
    assert manifest.total == 2 and manifest.skipped == 2

    samples = list(ConversationReader(tmp_path / "shards", RATE, train=False))
    assert [len(s.audio) for s in samples] == [2, 1]
    assert [len(w) for w in samples[0].audio] == [8000, 20000]  # clip order follows the listing
    batch = make_lalm("linear").collator()(samples)
    assert batch["audio"].shape[0] == 3


def test_sequence_length_counts_the_positions_the_llm_runs_over():
    model = make_lalm("mlp2x_gelu", downsample=2)
    frames = model.audio_frames_per_window()
    clip = model.encoder.config.audio.clip_samples
    messages = _conversation("a tone")
    text = len(model.formatter.encode(messages).input_ids)
    feats = ConversationSample("f", messages, features=[torch.zeros(7, model.encoder.sequence_dim)])
    assert model.sequence_length(feats) == text + 4  # 7 frames, 2 per token
    wave = ConversationSample("a", messages, audio=[torch.zeros(clip)])
    assert model.sequence_length(wave) == text + -(-frames // 2)
    # The collated batch of the feature sample is exactly that long once its audio tokens are spliced in.
    batch = model.collator()([feats])
    prepared = model.prepare_inputs(
        batch["input_ids"],
        batch["attention_mask"],
        batch["labels"],
        audio_features=batch["audio_features"],
        audio_features_mask=batch["audio_features_mask"],
    )
    assert prepared.embeds.shape[1] == model.sequence_length(feats)
    # A cross-attention projector adds no positions.
    assert make_lalm("xattn", every=1, heads=2, ff_mult=2.0).sequence_length(feats) == text


def test_length_grouped_batches_cover_every_item_once_with_little_padding():
    from clapkit.lalm.data import LengthGroupedBatchSampler

    lengths = torch.randint(40, 100, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    sampler = LengthGroupedBatchSampler(lengths, 16, generator=torch.Generator().manual_seed(1))
    batches = list(sampler)
    assert len(batches) == len(sampler) == 1000 // 16 and all(len(b) == 16 for b in batches)
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == len(flat) == 1000 - 1000 % 16
    padded = sum(16 * max(lengths[i] for i in b) for b in batches)
    random_batches = torch.randperm(1000, generator=torch.Generator().manual_seed(2))[:992].view(-1, 16).tolist()
    random_padded = sum(16 * max(lengths[i] for i in b) for b in random_batches)
    real = sum(lengths[i] for i in flat)
    assert padded / real < 1.05 and random_padded / real > 1.2
    # The batches are shuffled: not longest-first within each mega-batch of 50 batches.
    maxima = [max(lengths[i] for i in b) for b in batches[:50]]
    assert maxima != sorted(maxima, reverse=True)
    again = list(LengthGroupedBatchSampler(lengths, 16, generator=torch.Generator().manual_seed(1)))
    assert again == batches  # seeded
    keep = LengthGroupedBatchSampler(lengths, 16, drop_last=False, generator=torch.Generator().manual_seed(1))
    assert len(keep) == len(list(keep)) == 63 and sorted(i for b in keep for i in b) == list(range(1000))
    with pytest.raises(ValueError, match="no conversations"):
        LengthGroupedBatchSampler([], 4)


def test_text_conversations_are_written_as_shards_the_reader_reads(tmp_path) -> None:
    from clapkit.lalm.data import ConversationReader, write_text_conversations

    convs = [[{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}."}] for i in range(5)]
    out = write_text_conversations(convs, tmp_path / "text", max_count=2)
    assert sorted(p.name for p in out.iterdir()) == ["conv-000000.tar", "conv-000001.tar", "conv-000002.tar"]
    assert not (tmp_path / "text.tmp").exists()
    read = list(ConversationReader(out, 16000, train=False).samples())
    assert [s.messages[-1]["content"] for s in read] == [f"{i}." for i in range(5)] and not any(s.audio for s in read)
    with pytest.raises(ValueError, match="conversation 1: has <Audio> markers"):
        write_text_conversations([convs[0], [{"role": "user", "content": "<Audio> what?"}]], tmp_path / "bad")
    with pytest.raises(ValueError, match="no conversations"):
        write_text_conversations([], tmp_path / "none")
    assert not (tmp_path / "bad").exists()
