import io
import json

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from clapkit.data import writer
from clapkit.data.inputs import InputRecord, read_jsonl
from clapkit.data.schema import load_manifest
from clapkit.data.writer import WriterConfig, parse_size, write_shards
from tests.data.conftest import RATE, make_records


@pytest.mark.parametrize(
    ("text", "size"),
    [("256MB", 256_000_000), ("256mb", 256_000_000), ("1GiB", 2**30), ("1.5 kb", 1500), ("4096", 4096), (10, 10)],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "12 parsecs", "-3MB", "4G"])
def test_parse_size_rejects(text):
    # "4G" is refused rather than read as 4·10^9 or 4·2^30: a bare prefix means either, depending on the tool.
    with pytest.raises(ValueError, match=r"shard size .*powers of 1000.*powers of 1024"):
        parse_size(text)


def _tar_samples(path):
    return list(wds.DataPipeline(wds.SimpleShardList([str(path)]), wds.tarfile_to_samples()))


def test_round_trip_audio_and_metadata(shard_dir):
    out, records = shard_dir(n=6, per_shard=4)
    manifest = load_manifest(out)
    assert [s.count for s in manifest.shards] == [4, 2] and manifest.total == 6 and manifest.complete
    assert (manifest.shards[0].first_index, manifest.shards[0].end_index) == (0, 4)
    samples = [s for shard in manifest.shards for s in _tar_samples(out / shard.name)]
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(6)]
    for sample, record in zip(samples, records):
        original, rate = sf.read(record.audio, dtype="float32")
        decoded, stored_rate = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
        assert stored_rate == rate == RATE
        np.testing.assert_allclose(decoded, original, atol=2 / 32768)  # 16-bit quantisation
        meta = json.loads(sample["json"])
        for field in ("captions", "positives", "negatives", "labels"):
            assert meta[field] == record.fields[field]
        assert meta["duration"] == pytest.approx(len(original) / RATE)
        assert meta["source"] == record.audio
    assert not list(out.glob("*.partial")) and json.loads((out / "report.json").read_text()) == {"skipped": []}


def test_resamples_to_the_shard_rate(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(22050, np.float32), 22050)
    write_shards([InputRecord(str(path), {"caption": "quiet"})], tmp_path / "out", WriterConfig(), progress=False)
    sample = _tar_samples(tmp_path / "out" / "shard-000000.tar")[0]
    info = sf.info(io.BytesIO(sample["flac"]))
    assert (info.samplerate, info.frames, info.subtype) == (48000, 48000, "PCM_16")


def test_bad_inputs_are_skipped_and_reported(tmp_path):
    records = make_records(tmp_path / "clips", 3)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wav")
    records[1:1] = [
        InputRecord(records[0].audio, {"captions": [""]}, origin="list.csv:3"),
        InputRecord(str(tmp_path / "broken.wav"), {"captions": ["x"]}, origin="list.csv:4"),
        InputRecord(records[0].audio, {}, origin="list.csv:5"),
        InputRecord("", {}, origin="list.csv:6", error="list.csv:6: invalid JSON"),
        InputRecord(str(tmp_path / "gone.wav"), {"captions": ["x"]}, origin="list.csv:7"),
    ]
    manifest = write_shards(records, tmp_path / "out", WriterConfig(sample_rate=RATE), progress=False)
    assert manifest.total == 3 and manifest.skipped == 5
    report = json.loads((tmp_path / "out" / "report.json").read_text())["skipped"]
    assert [e["index"] for e in report] == [1, 2, 3, 4, 5]
    reasons = [e["reason"] for e in report]
    assert "captions[0] is empty" in reasons[0]
    assert "cannot decode audio" in reasons[1]
    assert "no caption" in reasons[2]
    assert reasons[3] == "list.csv:6: invalid JSON"
    assert "no such audio file" in reasons[4]
    keys = [s["__key__"] for s in _tar_samples(tmp_path / "out" / "shard-000000.tar")]
    assert keys == ["000000000", "000000006", "000000007"]


def test_conversation_samples_without_captions(tmp_path):
    records = make_records(tmp_path / "clips", 1)
    turns = [{"role": "user", "content": "<Audio> what is it?"}, {"role": "assistant", "content": "noise"}]
    record = InputRecord(records[0].audio, {"conversation": turns})
    config = WriterConfig(sample_rate=RATE, require_captions=False)
    write_shards([record], tmp_path / "out", config, progress=False)
    meta = json.loads(_tar_samples(tmp_path / "out" / "shard-000000.tar")[0]["json"])
    assert meta["conversation"] == turns and meta["captions"] == []


def _shard_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*"))}


def test_resume_after_interruption(tmp_path, monkeypatch):
    records = make_records(tmp_path / "clips", 10)
    records[3] = InputRecord(records[3].audio, {"captions": [" "]}, origin="bad caption")
    config = WriterConfig(sample_rate=RATE, max_count=3)
    write_shards(records, tmp_path / "whole", config, progress=False)

    real = writer.encode_record
    calls = []

    def crash_at_8(record, cfg):
        calls.append(record.audio)
        if record.audio == records[8].audio:
            raise KeyboardInterrupt
        return real(record, cfg)

    monkeypatch.setattr(writer, "encode_record", crash_at_8)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        write_shards(records, out, config, progress=False)
    interrupted = load_manifest(out)
    assert [s.count for s in interrupted.shards] == [3, 3] and not interrupted.complete
    assert list(out.glob("*.partial"))  # the shard being written when the run stopped

    calls.clear()
    monkeypatch.setattr(writer, "encode_record", lambda r, c: calls.append(r.audio) or real(r, c))
    resumed = write_shards(records, out, config, progress=False)
    assert calls == [r.audio for r in records[interrupted.shards[-1].end_index :]]  # finished shards not redone
    assert resumed.complete
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "whole")  # the interrupted shard was rewritten whole
    assert (out / "report.json").read_text() == (tmp_path / "whole" / "report.json").read_text()
    assert load_manifest(out).to_dict() == load_manifest(tmp_path / "whole").to_dict()

    calls.clear()
    write_shards(records, out, config, progress=False)
    assert calls == []  # complete: nothing to redo


def test_other_inputs_need_overwrite(tmp_path):
    records = make_records(tmp_path / "clips", 2)
    out = tmp_path / "out"
    write_shards(records, out, WriterConfig(sample_rate=RATE), progress=False)
    with pytest.raises(ValueError, match="other inputs or settings"):
        write_shards(records[:1], out, WriterConfig(sample_rate=RATE), progress=False)
    manifest = write_shards(records[:1], out, WriterConfig(sample_rate=RATE), overwrite=True, progress=False)
    assert manifest.total == 1 and len(list(out.glob("shard-*"))) == 1


def test_process_pool_gives_the_same_shards(tmp_path):
    records = make_records(tmp_path / "clips", 6)
    write_shards(records, tmp_path / "serial", WriterConfig(sample_rate=RATE, max_count=4), progress=False)
    write_shards(records, tmp_path / "pool", WriterConfig(sample_rate=RATE, max_count=4, workers=2), progress=False)
    assert _shard_bytes(tmp_path / "pool") == _shard_bytes(tmp_path / "serial")


def test_shard_size_limit(tmp_path):
    records = make_records(tmp_path / "clips", 6)
    config = WriterConfig(sample_rate=RATE, shard_size=20_000)
    manifest = write_shards(records, tmp_path / "out", config, progress=False)
    # Each clip is ~8-24 kB of FLAC: a shard closes as soon as it reaches the size.
    assert len(manifest.shards) >= 3 and manifest.total == 6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"bits": 8}, "16 or 24"), ({"compression": 2.0}, "between 0.0 and 1.0"), ({"sample_rate": 0}, "rate in Hz")],
)
def test_writer_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WriterConfig(**kwargs)


def test_counterfactual_audio_is_a_member(tmp_path, counterfactual_listing):
    listing, waves = counterfactual_listing
    records = read_jsonl(listing)
    records.append(
        InputRecord(records[0].audio, {"captions": ["x"], "counterfactual_audio": str(tmp_path / "no.flac")})
    )
    manifest = write_shards(records, tmp_path / "out", WriterConfig(sample_rate=RATE), progress=False)
    assert manifest.total == 6 and manifest.skipped == 1
    reason = json.loads((tmp_path / "out" / "report.json").read_text())["skipped"][0]["reason"]
    assert "counterfactual audio" in reason and "no such audio file" in reason
    samples = _tar_samples(tmp_path / "out" / "shard-000000.tar")
    for i, sample in enumerate(samples):
        audio, counterfactual = waves[i]
        meta = json.loads(sample["json"])
        np.testing.assert_allclose(sf.read(io.BytesIO(sample["flac"]), dtype="float32")[0], audio, atol=2 / 32768)
        if counterfactual is None:
            assert "counterfactual.flac" not in sample and "counterfactual_audio" not in meta
        else:
            decoded, rate = sf.read(io.BytesIO(sample["counterfactual.flac"]), dtype="float32")
            assert rate == RATE
            np.testing.assert_allclose(decoded, counterfactual, atol=2 / 32768)
            assert meta["counterfactual_audio"] == str(listing.parent / f"s{i}.counterfactual.flac")

    # Turned off, only the file name is kept.
    config = WriterConfig(sample_rate=RATE, counterfactual_audio=False)
    write_shards(records[:2], tmp_path / "names", config, progress=False)
    second = _tar_samples(tmp_path / "names" / "shard-000000.tar")[1]
    assert "counterfactual.flac" not in second and json.loads(second["json"])["counterfactual_audio"]
