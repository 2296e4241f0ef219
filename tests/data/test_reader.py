import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch
import webdataset as wds

from clapkit.audio import fit_length
from clapkit.data.batch import collate
from clapkit.data.inputs import read_jsonl
from clapkit.data.reader import ReaderConfig, ShardReader, resolve_shards
from clapkit.data.schema import load_manifest
from clapkit.data.writer import WriterConfig, write_shards
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
    assert "counterfactual" not in batch
    with_cf = [dict(s, counterfactual=torch.full((4,), float(s["length"])), counterfactual_length=0) for s in samples]
    with_cf[0]["counterfactual_length"] = 1
    batch = collate(with_cf)
    assert batch["counterfactual"][:, 0].tolist() == [1.0, 4.0]
    assert batch["has_counterfactual"].tolist() == [True, False]
    assert batch["counterfactual_lengths"].tolist() == [1, 0]


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


def _counterfactual_shards(tmp_path, listing):
    out = tmp_path / "cf_shards"
    write_shards(read_jsonl(listing), out, WriterConfig(sample_rate=RATE, max_count=4), progress=False)
    return out


@pytest.mark.parametrize("pad", ["repeatpad", "zero"])
def test_counterfactual_audio_is_read_like_the_audio(tmp_path, counterfactual_listing, pad):
    listing, waves = counterfactual_listing
    out = _counterfactual_shards(tmp_path, listing)
    clip = int(RATE * CLIP)
    config = _config(train=False, pad=pad, counterfactuals=True, batch_size=4)
    reader = ShardReader(out, config)
    batches = list(reader)
    assert _keys(batches) == [f"{i:09d}" for i in range(6)]
    for batch in batches:
        size = len(batch["keys"])
        assert batch["counterfactual"].shape == (size, clip) and batch["counterfactual"].dtype == torch.float32
        assert batch["has_counterfactual"].dtype == torch.bool and batch["has_counterfactual"].shape == (size,)
        for row, key in enumerate(batch["keys"]):
            audio, counterfactual = waves[int(key)]
            expected = fit_length(torch.from_numpy(audio), clip, pad=pad, crop="center")
            torch.testing.assert_close(batch["audio"][row], expected, atol=2 / 32768, rtol=0)
            if counterfactual is None:
                assert not batch["has_counterfactual"][row] and batch["counterfactual_lengths"][row] == 0
                assert not batch["counterfactual"][row].any()
                continue
            assert batch["has_counterfactual"][row]
            assert batch["counterfactual_lengths"][row] == min(len(counterfactual), clip)
            expected = fit_length(torch.from_numpy(counterfactual), clip, pad=pad, crop="center")  # the same rules
            torch.testing.assert_close(batch["counterfactual"][row], expected, atol=2 / 32768, rtol=0)
    assert reader.stats.as_dict()["counterfactuals"] == 4 and reader.stats.skipped == 0

    # DataLoader workers build the batches in shared memory: the same values.
    via_workers = list(ShardReader(out, config).loader(num_workers=2))
    by_key = {k: (b, i) for b in via_workers for i, k in enumerate(b["keys"])}
    for batch in batches:
        for row, key in enumerate(batch["keys"]):
            other, i = by_key[key]
            for name in ("audio", "counterfactual", "counterfactual_lengths", "has_counterfactual", "audio_mask"):
                assert torch.equal(batch[name][row], other[name][i]), name

    # Off (the default), the member is not read and the batch has no counterfactual fields.
    plain = next(iter(ShardReader(out, _config(train=False, pad=pad, batch_size=4))))
    assert "counterfactual" not in plain and torch.equal(plain["audio"], batches[0]["audio"])


def test_counterfactual_training_crops_its_own_window(tmp_path):
    long = noise(11, 2.0)  # both 2 s; the clip is 0.5 s
    members = {"__key__": "a", "flac": _flac_of(noise(10, 2.0)), "json": b'{"captions": ["x"]}'}
    _write_tar(tmp_path / "a.tar", [{**members, "counterfactual.flac": _flac_of(long)}])
    clip = int(RATE * CLIP)
    batch = next(iter(ShardReader([tmp_path / "a.tar"], _config(counterfactuals=True))))
    window = batch["counterfactual"][0].numpy()
    (starts,) = np.nonzero(np.abs(np.lib.stride_tricks.sliding_window_view(long, 16) - window[:16]).max(1) < 2e-4)
    assert len(starts) == 1  # a contiguous window of the counterfactual recording
    np.testing.assert_allclose(window, long[starts[0] : starts[0] + clip], atol=2 / 32768)
    assert batch["counterfactual_lengths"].tolist() == [clip]


def test_corrupt_counterfactual_skips_the_sample(tmp_path):
    good = json.dumps({"captions": ["ok"]}).encode()
    _write_tar(
        tmp_path / "a.tar",
        [
            {"__key__": "good", "flac": _flac(1), "json": good, "counterfactual.flac": _flac(2)},
            {"__key__": "bad", "flac": _flac(3), "json": good, "counterfactual.flac": b"fLaC" + b"\x00" * 100},
            {"__key__": "none", "flac": _flac(4), "json": good},
        ],
    )
    reader = ShardReader([tmp_path / "a.tar"], _config(train=False, counterfactuals=True))
    batch = next(iter(reader))
    assert batch["keys"] == ["good", "none"] and batch["has_counterfactual"].tolist() == [True, False]
    stats = reader.stats.as_dict()
    assert stats["skipped_audio"] == 1 and stats["samples"] == 2 and stats["counterfactuals"] == 1
    # Without counterfactuals the bad member is never read: nothing is skipped.
    plain = ShardReader([tmp_path / "a.tar"], _config(train=False))
    assert _keys(plain) == ["good", "bad", "none"] and plain.stats.skipped == 0


def test_loader_state_resumes_epoch_and_position(shard_dir):
    out, _ = shard_dir(n=12, per_shard=3)
    config = _config(batch_size=2, drop_last=True)
    loader = ShardReader(out, config).loader(num_workers=0)
    epochs = [[b["keys"] for b in loader] for _ in range(3)]  # 6 batches per epoch
    assert epochs[0] != epochs[1] != epochs[2]

    first = ShardReader(out, config).loader(num_workers=0)
    assert first.state_dict() == {"epoch": 0, "batches": 0}
    assert [b["keys"] for b in first] == epochs[0]
    batches = iter(first)
    seen = [next(batches)["keys"] for _ in range(2)]  # interrupted after 2 batches of epoch 1
    state = first.state_dict()
    assert state == {"epoch": 1, "batches": 2} and seen == epochs[1][:2]
    resumed = ShardReader(out, config).loader(num_workers=0)
    resumed.load_state_dict(state)
    assert [b["keys"] for b in resumed] == epochs[1][2:]  # goes on after the batches it had
    assert [b["keys"] for b in resumed] == epochs[2]  # and the next pass is a whole epoch

    # A trainer that fetched a batch ahead counts only the ones it used; a finished pass resumes at the next epoch.
    ahead = ShardReader(out, config).loader(num_workers=0)
    ahead.consumed = lambda: 1
    batches = iter(ahead)
    next(batches), next(batches)
    assert ahead.state_dict() == {"epoch": 0, "batches": 1}
    list(batches)
    assert ahead.state_dict() == {"epoch": 1, "batches": 0}

    # With two workers the batches alternate between them; each leaves out its own share (the resumed pass
    # starts its turns at worker 0 again, so the same batches may come in another order).
    two = ShardReader(out, config).loader(num_workers=2)
    whole = [b["keys"] for b in two]
    two.load_state_dict({"epoch": 0, "batches": 3})
    assert sorted([b["keys"] for b in two]) == sorted(whole[3:])


def test_resampled_resume_draws_afresh_and_keeps_the_epoch_length(shard_dir):
    out, _ = shard_dir(n=6, per_shard=2)
    config = _config(resampled=True, epoch_samples=12, batch_size=2)
    loader = ShardReader(out, config).loader(num_workers=0)
    whole = [b["keys"] for b in loader]
    assert len(whole) == 6
    loader.load_state_dict({"epoch": 0, "batches": 4})
    rest = [b["keys"] for b in loader]
    assert len(rest) == 2  # the epoch keeps its length
    loader.load_state_dict({"epoch": 0, "batches": 0})
    assert [b["keys"] for b in loader] == whole  # from the start: the same draw


def _flac_of(wave):
    buf = io.BytesIO()
    sf.write(buf, wave, RATE, format="FLAC")
    return buf.getvalue()


@pytest.mark.parametrize(("workers", "drop_last"), [(0, False), (2, False), (2, True)])
def test_evaluation_batches_per_rank_match_the_pass_and_pad_evenly(shard_dir, monkeypatch, workers, drop_last):
    # 11 samples in shards of 3, 3, 3, 2 over 3 ranks: rank 0 reads shards 0 and 3, rank 1 shard 1, rank 2 shard 2.
    out, _ = shard_dir(n=11, per_shard=3)
    config = _config(train=False, batch_size=2, drop_last=drop_last, counterfactuals=True)
    world = 3
    counts = ShardReader(out, config).batches_per_rank(world, workers)
    seen = {}
    for rank in range(world):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        reader = ShardReader(out, config)
        batches = list(reader.loader(num_workers=workers))
        assert len(batches) == counts[rank]
        seen[rank] = _keys(batches)
        loader = reader.loader(num_workers=workers)
        loader.pad_to, loader.padding = max(counts), reader.padding_batch
        padded = list(loader)
        assert len(padded) == max(counts)
        assert _keys([b for b in padded if not b.get("padding")]) == seen[rank]
        for batch in padded[counts[rank] :]:
            assert batch["padding"] and batch["audio"].shape == (1, config.clip_samples)
            assert not batch["audio"].any() and not batch["has_counterfactual"].any()
    keys = [k for rank in seen for k in seen[rank]]
    assert len(keys) == len(set(keys))  # no sample read by two ranks
    if not drop_last:
        assert sorted(keys) == [f"{i:09d}" for i in range(11)] and len(set(counts)) > 1


def test_batches_per_rank_unknown_without_counts_or_for_training(shard_dir):
    out, _ = shard_dir(n=4, per_shard=2)
    assert ShardReader(out, _config(train=True)).batches_per_rank(2, 0) is None  # shuffled: no fixed split
    assert ShardReader(sorted(map(str, out.glob("*.tar"))), _config(train=False)).batches_per_rank(2, 0) is None
    loader = ShardReader(out, _config(train=False)).loader(num_workers=0)
    loader.pad_to = 5
    with pytest.raises(ValueError, match="needs ShardLoader.padding"):
        list(loader)
