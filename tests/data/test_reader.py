import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch
import webdataset as wds

from clapkit.data.reader import ReaderConfig, ShardReader, collate, resolve_shards
from clapkit.data.schema import load_manifest
from tests.data.conftest import RATE, noise

CLIP = 0.5  # seconds: longer than some test clips (padded), shorter than others (cropped)


def _config(**overrides):
    base = {"sample_rate": RATE, "clip_seconds": CLIP, "batch_size": 3, "shuffle_buffer": 4, "shuffle_initial": 2}
    return ReaderConfig(**{**base, **overrides})


def _keys(batches):
    return [k for b in batches for k in b["keys"]]


def test_round_trip_eval_batches(shard_dir):
    out, records = shard_dir(n=7, per_shard=3)
    reader = ShardReader(out, _config(train=False, pad="zero", clip_seconds=1.0))
    batches = list(reader)
    assert [len(b["keys"]) for b in batches] == [3, 3, 1]  # shard order, one partial batch at the end
    assert _keys(batches) == [f"{i:09d}" for i in range(7)]
    clip = RATE  # 1 s
    for b in batches:
        assert b["audio"].shape == (len(b["keys"]), clip) and b["audio"].dtype == torch.float32
        assert torch.equal(b["audio_mask"], torch.arange(clip)[None] < b["lengths"][:, None])
    flat = {k: (b, i) for b in batches for i, k in enumerate(b["keys"])}
    for index, record in enumerate(records):
        batch, i = flat[f"{index:09d}"]
        original = sf.read(record.audio, dtype="float32")[0]
        n = min(len(original), clip)
        assert batch["lengths"][i] == n
        np.testing.assert_allclose(batch["audio"][i, :n].numpy(), original[:n], atol=2 / 32768)
        assert not batch["audio"][i, n:].any()  # zero padding
        assert batch["captions"][i] == record.fields["captions"][0]  # eval: the first caption
        assert batch["positives"][i] == record.fields["positives"]
        assert batch["negatives"][i] == record.fields["negatives"]
        assert batch["labels"][i] == record.fields["labels"]
    stats = reader.stats.as_dict()
    assert stats["samples"] == 7 and stats["shards"] == 3 and reader.stats.skipped == 0


def test_eval_is_deterministic_and_training_varies_by_epoch(shard_dir):
    out, _ = shard_dir(n=6, per_shard=2)
    ev = ShardReader(out, _config(train=False))
    first, second = list(ev), list(ev)
    assert all(torch.equal(a["audio"], b["audio"]) for a, b in zip(first, second))
    train = ShardReader(out, _config(other_captions_as_positives=True))
    epoch0, epoch1 = list(train), list(train)
    assert sorted(_keys(epoch0)) == sorted(_keys(epoch1))
    assert _keys(epoch0) != _keys(epoch1)  # reshuffled
    train.set_epoch(0)
    assert _keys(list(train)) == _keys(epoch0)  # an epoch replays exactly
    for batch in epoch0:
        for caption, positives in zip(batch["captions"], batch["positives"]):
            assert len(positives) == 2 and caption not in positives  # the other caption joined the positives


def test_positive_and_negative_limits(shard_dir):
    out, _ = shard_dir(n=3, per_shard=3)
    batch = next(iter(ShardReader(out, _config(train=False, max_positives=0, max_negatives=0))))
    assert batch["positives"] == [[], [], []] and batch["negatives"] == [[], [], []]


def _write_tar(path, samples):
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)


def _flac(seed):
    buf = io.BytesIO()
    sf.write(buf, noise(seed, 0.1), RATE, format="FLAC")
    return buf.getvalue()


def test_corrupt_members_are_skipped_and_counted(tmp_path):
    good = json.dumps({"captions": ["ok"]}).encode()
    _write_tar(
        tmp_path / "a.tar",
        [
            {"__key__": "good1", "flac": _flac(1), "json": good},
            {"__key__": "badaudio", "flac": b"fLaC" + b"\x00" * 100, "json": good},
            {"__key__": "badjson", "flac": _flac(2), "json": b"{nope"},
            {"__key__": "badfield", "flac": _flac(3), "json": b'{"captions": [""]}'},
            {"__key__": "nocaption", "flac": _flac(4), "json": b'{"labels": ["x"]}'},
            {"__key__": "onlyaudio", "flac": _flac(5)},
            {"__key__": "good2", "flac": _flac(6), "json": good},
        ],
    )
    (tmp_path / "b.tar").write_bytes(b"this is not a tar file at all" * 40)
    reader = ShardReader([tmp_path / "a.tar", tmp_path / "b.tar", tmp_path / "missing.tar"], _config(train=False))
    assert _keys(reader) == ["good1", "good2"]
    stats = reader.stats.as_dict()
    assert stats["samples"] == 2
    assert stats["skipped_audio"] == 1
    assert stats["skipped_metadata"] == 2
    assert stats["skipped_no_caption"] == 1
    assert stats["skipped_incomplete"] == 1
    assert stats["shards"] == 3 and stats["shard_errors"] == 2
    assert reader.stats.skipped == 5


@pytest.mark.parametrize("where", ["flac", "json"])
def test_truncated_shard_is_counted_and_reading_continues(shard_dir, where):
    out, _ = shard_dir(n=8, per_shard=4)
    shard = out / load_manifest(out).shards[0].name
    data = shard.read_bytes()
    # Cut inside the 3rd sample's audio, or inside its json (its audio then arrives alone).
    member = f"000000002.{where}".encode()
    cut = data.index(member) + 512 + 10
    shard.write_bytes(data[:cut])
    reader = ShardReader(out, _config(train=False))
    keys = _keys(reader)
    assert keys == ["000000000", "000000001", "000000004", "000000005", "000000006", "000000007"]
    stats = reader.stats.as_dict()
    assert stats["shard_errors"] == 1
    if where == "flac":
        assert stats["samples_missing"] == 2 and stats["skipped_incomplete"] == 0
    else:
        assert stats["samples_missing"] == 1 and stats["skipped_incomplete"] == 1
    # Every sample the manifest lists is accounted for.
    assert stats["samples"] + reader.stats.skipped + stats["samples_missing"] == 8


def test_dataloader_two_workers_yield_each_sample_once_per_epoch(shard_dir):
    out, _ = shard_dir(n=12, per_shard=3)
    reader = ShardReader(out, _config(batch_size=2))
    loader = reader.loader(num_workers=2)
    epochs = [_keys(loader) for _ in range(2)]
    expected = [f"{i:09d}" for i in range(12)]
    for keys in epochs:
        assert sorted(keys) == expected  # each sample exactly once
    assert epochs[0] != epochs[1]
    stats = reader.stats.as_dict()  # the workers' counts reach the main process
    assert stats["samples"] == 24 and stats["shards"] == 8


def test_resampled_epoch_length(shard_dir):
    out, _ = shard_dir(n=6, per_shard=2)
    reader = ShardReader(out, _config(resampled=True, epoch_samples=10, batch_size=2))
    batches = list(reader)
    assert len(batches) == 5 and all(len(b["keys"]) == 2 for b in batches)
    assert set(_keys(batches)) <= {f"{i:09d}" for i in range(6)}


def test_collate_shapes():
    samples = [
        {"audio": torch.ones(4), "length": n, "caption": "c", "positives": [], "negatives": ["n"] * n}
        | {"labels": [], "key": str(n), "extra": {}}
        for n in (1, 4)
    ]
    batch = collate(samples)
    assert batch["audio"].shape == (2, 4) and batch["lengths"].tolist() == [1, 4]
    assert batch["audio_mask"].tolist() == [[True, False, False, False], [True] * 4]
    assert batch["negatives"] == [["n"], ["n"] * 4]


def test_resolve_shards(tmp_path, shard_dir):
    out, _ = shard_dir(n=4, per_shard=2)
    urls, counts = resolve_shards(out)
    assert urls == [str(out / "shard-000000.tar"), str(out / "shard-000001.tar")] and set(counts.values()) == {2}
    assert resolve_shards(out / "manifest.json") == (urls, counts)
    assert resolve_shards(str(out / "shard-{000000..000001}.tar")) == (urls, {})
    with pytest.raises(ValueError, match="no shards to read"):
        resolve_shards(tmp_path / "clips")


def test_long_audio_is_cut_while_decoding(tmp_path):
    original = noise(7, 2.0)  # 2 s; the clip is 0.5 s
    buf = io.BytesIO()
    sf.write(buf, original, RATE, format="FLAC")
    _write_tar(tmp_path / "a.tar", [{"__key__": "long", "flac": buf.getvalue(), "json": b'{"captions": ["x"]}'}])
    clip = int(RATE * CLIP)
    batch = next(iter(ShardReader([tmp_path / "a.tar"], _config(train=False))))
    start = (len(original) - clip) // 2
    np.testing.assert_allclose(batch["audio"][0].numpy(), original[start : start + clip], atol=2 / 32768)
    assert batch["lengths"].tolist() == [clip]

    train = ShardReader([tmp_path / "a.tar"], _config())
    starts = set()
    for _ in range(3):
        window = next(iter(train))["audio"][0].numpy()
        head = np.lib.stride_tricks.sliding_window_view(original, 16)
        (candidates,) = np.nonzero(np.abs(head - window[:16]).max(axis=1) < 2 / 32768)
        assert len(candidates) == 1  # the window is a contiguous piece of the recording
        s = int(candidates[0])
        np.testing.assert_allclose(window, original[s : s + clip], atol=2 / 32768)
        starts.add(s)
    assert len(starts) == 3  # a new random offset every epoch


def test_other_rates_channels_and_float_audio_go_through_load_audio(tmp_path):
    stereo = np.stack([noise(1, 0.2, 22050), noise(2, 0.2, 22050)], axis=1)  # [T, 2] at 22.05 kHz
    with_nan = noise(3, 0.2)
    with_nan[5] = np.nan
    members = []
    for key, wave, rate, subtype in (("stereo", stereo, 22050, "PCM_16"), ("nan", with_nan, RATE, "FLOAT")):
        buf = io.BytesIO()
        sf.write(buf, wave, rate, format="WAV", subtype=subtype)
        members.append({"__key__": key, "wav": buf.getvalue(), "json": b'{"captions": ["x"]}'})
    _write_tar(tmp_path / "a.tar", members)
    reader = ShardReader([tmp_path / "a.tar"], _config(train=False, pad="zero"))
    batch = next(iter(reader))
    assert batch["keys"] == ["stereo"]
    assert batch["lengths"].tolist() == [round(0.2 * RATE)]  # resampled from 22.05 kHz
    stats = reader.stats.as_dict()
    assert stats["skipped_audio"] == 1 and stats["samples"] == 1  # NaN samples are refused


def test_config_validation_and_package_exports():
    with pytest.raises(ValueError, match="pad='mirror'"):
        ReaderConfig(pad="mirror")
    with pytest.raises(ValueError, match="must be positive"):
        ReaderConfig(batch_size=0)
    import clapkit.data

    assert clapkit.data.ShardReader is ShardReader
    with pytest.raises(AttributeError):
        clapkit.data.nothing  # noqa: B018
