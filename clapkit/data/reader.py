"""The WebDataset reader: shards → decoded, cropped, captioned samples → collated batches.

Stages (webdataset's unless marked)::

    shard urls   SimpleShardList (order shuffled per epoch, the same on every rank and worker)
                 → split_by_node → split_by_worker            each shard read once per epoch
             or  ResampledShards (drawn with replacement, seeded per rank and worker; multi-node)
    tar members  tar_file_iterator, per shard (clapkit: counts unreadable shards and missing samples)
                 → group_by_keys
    shuffle      a buffer of still-encoded samples (training)
    sample       decode (only the clip's window of longer audio) → resample → crop / pad → pick a caption
                 → positives / negatives (clapkit)
    batch        batched + :func:`collate`

Corrupt samples and shards never stop a run: they are skipped and counted in :class:`ReaderStats`,
which DataLoader workers share with the main process.
"""

from __future__ import annotations

import io
import logging
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import soundfile as sf
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, default_collate
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_iterator

from clapkit.audio import PadMode, fit_length, load_audio
from clapkit.data.files import AUDIO_EXTENSIONS
from clapkit.data.schema import MANIFEST_NAME, SampleMeta, load_manifest

__all__ = ["COUNTERS", "ReaderConfig", "ReaderStats", "ShardLoader", "ShardReader", "collate", "resolve_shards"]

log = logging.getLogger(__name__)

#: What :class:`ReaderStats` counts.
COUNTERS = (
    "shards",  # shards opened (a resampled shard counts each time it is drawn)
    "shard_errors",  # shards that could not be opened or read to the end
    "bad_members",  # malformed tar members (e.g. a duplicate name), dropped
    "samples",  # samples delivered
    "skipped_incomplete",  # audio or json member missing (e.g. cut by a truncated shard)
    "skipped_metadata",  # json that is not valid sample metadata
    "skipped_audio",  # audio that does not decode (or is empty / non-finite)
    "skipped_no_caption",  # no caption although captions are required
    "samples_missing",  # samples the manifest lists but the shard did not hold (lost to a truncation)
)
_SKIPPED = tuple(c for c in COUNTERS if c.startswith("skipped_"))
_AUDIO_KEYS = frozenset(ext.lstrip(".") for ext in AUDIO_EXTENSIONS)
_LOUD_WARNINGS = 10  # per counter and process; later ones go to DEBUG


@dataclass
class ReaderConfig:
    """How samples are read and batched.

    Attributes:
        sample_rate: Hz the model takes; shards stored at another rate are resampled per sample.
        clip_seconds: Seconds per clip: longer audio is cropped, shorter padded.
        pad: ``repeatpad`` (tile the clip, LAION-CLAP) or ``zero``.
        batch_size: Samples per batch (per DataLoader worker batch, per rank).
        train: Random crops, caption sampling and shuffling; ``False`` gives centre crops, the first caption,
            the first ``max_*`` positives / negatives and the shard order — the same samples on every run.
        resampled: Draw shards with replacement — an endless stream, for multi-node training where every
            rank must see the same number of batches; set ``epoch_samples``.
        epoch_samples: Samples per epoch over all ranks and workers, with ``resampled`` (``None``: endless).
        shuffle_buffer: Encoded samples held for shuffling per worker; 1000 × ~0.5 MB of FLAC
            (10 s at 48 kHz, 16 bit) ≈ 0.5 GB of memory per worker.
        shuffle_initial: Samples buffered before the first one is given out.
        max_positives: Positives kept per sample (a random subset when training); ``None`` keeps all.
        max_negatives: The same for hard negatives.
        other_captions_as_positives: The captions not drawn join the positives.
        require_captions: Skip (and count) samples without a caption.
        drop_last: Drop the last, smaller batch of each worker.
        seed: Base seed of shard order, shuffling, crops and caption choice (mixed with epoch, rank, worker).
    """

    sample_rate: int = 48_000
    clip_seconds: float = 10.0
    pad: PadMode = "repeatpad"
    batch_size: int = 32
    train: bool = True
    resampled: bool = False
    epoch_samples: int | None = None
    shuffle_buffer: int = 1000
    shuffle_initial: int = 100
    max_positives: int | None = None
    max_negatives: int | None = None
    other_captions_as_positives: bool = False
    require_captions: bool = True
    drop_last: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.pad not in ("repeatpad", "zero"):
            raise ValueError(f"pad={self.pad!r}: use 'repeatpad' or 'zero'")
        if self.sample_rate <= 0 or self.clip_seconds <= 0 or self.batch_size <= 0:
            raise ValueError(
                f"sample_rate ({self.sample_rate}), clip_seconds ({self.clip_seconds}) and batch_size "
                f"({self.batch_size}) must be positive"
            )

    @property
    def clip_samples(self) -> int:
        return round(self.sample_rate * self.clip_seconds)

    @classmethod
    def for_audio(cls, audio: Any, **overrides: Any) -> ReaderConfig:
        """Take ``sample_rate``, ``clip_seconds`` and ``pad`` from a model's ``AudioConfig``."""
        fields = {"sample_rate": audio.sample_rate, "clip_seconds": audio.clip_seconds, "pad": audio.pad}
        return cls(**{**fields, **overrides})


class ReaderStats:
    """Skip and read counters, shared between a process and its DataLoader workers.

    Each process writes its own row of a shared-memory table (row 0: the main process, row
    ``i + 1``: worker ``i``), so no locks are needed; reading sums the rows.
    """

    def __init__(self, max_workers: int = 256) -> None:
        self._table = torch.zeros(max_workers + 1, len(COUNTERS), dtype=torch.long).share_memory_()

    def add(self, name: str, n: int = 1) -> None:
        info = torch.utils.data.get_worker_info()
        row = 0 if info is None else info.id + 1
        if row >= self._table.shape[0]:
            rows = self._table.shape[0]
            raise ValueError(f"worker {info.id}: ReaderStats holds {rows - 1} workers; raise max_workers")
        self._table[row, COUNTERS.index(name)] += n

    def as_dict(self) -> dict[str, int]:
        """Counter name → total over all processes."""
        return dict(zip(COUNTERS, self._table.sum(0).tolist()))

    @property
    def skipped(self) -> int:
        """Samples read but not delivered."""
        counts = self.as_dict()
        return sum(counts[c] for c in _SKIPPED)

    def reset(self) -> None:
        self._table.zero_()

    def __repr__(self) -> str:
        return "ReaderStats(" + ", ".join(f"{k}={v}" for k, v in self.as_dict().items() if v) + ")"


def resolve_shards(shards: str | Path | Sequence[str | Path]) -> tuple[list[str], dict[str, int]]:
    """Shard urls and, where a manifest gives them, their sample counts.

    Args:
        shards: A shard folder (its ``manifest.json``, else its ``*.tar`` files), a manifest path, a
            brace pattern (``data/shard-{000000..000099}.tar``), or a list of shard paths / urls.

    Raises:
        ValueError: nothing to read.
    """
    if isinstance(shards, (str, Path)):
        path = Path(shards)
        if path.is_dir() or path.name == MANIFEST_NAME:
            folder = path if path.is_dir() else path.parent
            if (folder / MANIFEST_NAME).exists():
                manifest = load_manifest(folder)
                counts = {str(folder / s.name): s.count for s in manifest.shards}
                urls = list(counts)
            else:
                urls, counts = [str(p) for p in sorted(folder.glob("*.tar"))], {}
        else:
            urls, counts = wds.shardlists.expand_urls(str(shards)), {}
    else:
        urls, counts = [str(s) for s in shards], {}
    if not urls:
        raise ValueError(f"{shards}: no shards to read; expected a shard folder, a manifest, a pattern or a list")
    return urls, counts


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack decoded samples into a batch.

    Returns:
        ``audio`` [B, T] float32; ``lengths`` [B] samples of the clip before padding; ``audio_mask`` [B, T]
        (``True`` on those samples; with ``repeatpad`` the tiled copies are real audio too, so LAION-style
        models ignore the mask); ``captions`` (B strings); ``positives``, ``negatives``, ``labels`` (B lists
        of strings, of any length); ``keys``; ``extra`` (B dicts of the samples' other metadata fields).
    """
    # default_collate stacks straight into shared memory inside a DataLoader worker (one copy less per batch).
    audio = default_collate([s["audio"] for s in samples])  # [B, T]
    lengths = torch.tensor([s["length"] for s in samples], dtype=torch.long)  # [B]
    mask = torch.ones(audio.shape, dtype=torch.bool)  # [B, T]; cheaper than comparing B × T positions
    for row, n in enumerate(lengths.tolist()):
        mask[row, n:] = False
    out: dict[str, Any] = {"audio": audio, "lengths": lengths, "audio_mask": mask}
    for name, key in (("captions", "caption"), ("positives", "positives"), ("negatives", "negatives")):
        out[name] = [s[key] for s in samples]
    out["labels"] = [s["labels"] for s in samples]
    out["keys"] = [s["key"] for s in samples]
    out["extra"] = [s["extra"] for s in samples]
    return out


class ShardReader(IterableDataset):
    """Batches from clapkit shards; an ``IterableDataset`` for a ``DataLoader`` with ``batch_size=None``.

    Example::

        reader = ShardReader("shards/", ReaderConfig.for_audio(model.config.audio, batch_size=64))
        for batch in reader.loader(num_workers=4):
            out = model(batch["audio"], model.tokenize(batch["captions"]))
        print(reader.stats)  # skipped and read counts, summed over the workers

    Args:
        shards: See :func:`resolve_shards`.
        config: Rates, lengths, sampling and batching.
        stats: Counters to add to (a new :class:`ReaderStats` by default).
    """

    def __init__(
        self,
        shards: str | Path | Sequence[str | Path],
        config: ReaderConfig | None = None,
        *,
        stats: ReaderStats | None = None,
    ) -> None:
        super().__init__()
        self.urls, self.expected = resolve_shards(shards)
        self.config = config or ReaderConfig()
        self.stats = stats or ReaderStats()
        self.epoch = 0
        self._warned: dict[str, int] = {}

    def set_epoch(self, epoch: int) -> None:
        """Seed the next pass with ``epoch`` (shard order, shuffle, crops); :meth:`loader` calls this."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self.epoch
        self.epoch += 1  # a persistent worker's copy advances on its own
        return iter(self.pipeline(epoch))

    def loader(self, num_workers: int = 2, **kwargs: Any) -> ShardLoader:
        """A DataLoader over this reader that advances the epoch on every pass (batches come collated)."""
        kwargs.setdefault("persistent_workers", False)
        return ShardLoader(self, batch_size=None, num_workers=num_workers, **kwargs)

    # ------------------------------------------------------------------------------------------------ stages

    def pipeline(self, epoch: int = 0) -> wds.DataPipeline:
        """The webdataset pipeline of one pass, for the calling rank and worker."""
        cfg = self.config
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        shared_seed = wds.utils.make_seed(cfg.seed, epoch)  # equal on all ranks/workers, so the splits agree
        own_seed = wds.utils.make_seed(cfg.seed, epoch, rank, worker)
        if cfg.resampled:
            stages: list[Any] = [wds.ResampledShards(self.urls, seed=shared_seed, deterministic=True)]
        else:
            order_seed = shared_seed if cfg.train else None
            stages = [wds.SimpleShardList(self.urls, seed=order_seed), wds.split_by_node, wds.split_by_worker]
        stages += [self._tar_members, partial(group_by_keys, handler=self._bad_member)]
        if cfg.train and cfg.shuffle_buffer > 1:
            initial = min(cfg.shuffle_initial, cfg.shuffle_buffer)
            stages.append(wds.shuffle(cfg.shuffle_buffer, initial, rng=random.Random(own_seed)))
        rng, gen = random.Random(own_seed + 1), torch.Generator().manual_seed(own_seed)
        stages.append(wds.map(partial(self.decode, rng=rng, generator=gen)))
        stages.append(wds.batched(cfg.batch_size, collation_fn=collate, partial=not cfg.drop_last))
        if cfg.resampled and cfg.epoch_samples is not None:
            per_worker = math.ceil(cfg.epoch_samples / (world * max(1, workers) * cfg.batch_size))
            stages.append(wds.slice(per_worker))
        return wds.DataPipeline(*stages)

    def _warn(self, counter: str, message: str) -> None:
        seen = self._warned[counter] = self._warned.get(counter, 0) + 1
        log.log(logging.WARNING if seen <= _LOUD_WARNINGS else logging.DEBUG, "%s (%s)", message, counter)

    def _skip(self, counter: str, message: str) -> None:
        self.stats.add(counter)
        self._warn(counter, message)

    def _bad_member(self, exn: Exception) -> bool:
        self._skip("bad_members", f"malformed tar member: {exn}")
        return True

    def _tar_members(self, urls: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Tar members of each shard, an end-of-shard marker after each; unreadable shards are counted.

        webdataset's ``tar_file_expander`` does this too, but reports errors without telling which shard
        they belong to; reading shard by shard lets a truncated shard count once and its lost samples be
        counted against the manifest.
        """
        for item in urls:
            url = item["url"]
            self.stats.add("shards")
            keys: set[str] = set()
            errors: list[str] = []

            def on_error(exn: Exception, errors: list[str] = errors) -> bool:
                errors.append(repr(exn))
                return True

            try:
                stream = wds.gopen(url)
                try:
                    for member in tar_file_iterator(stream, handler=on_error):
                        key = base_plus_ext(member["fname"])[0]
                        if key is not None:
                            keys.add(key)
                        member["__url__"] = url
                        yield member
                finally:
                    stream.close()
            except Exception as exn:  # any unreadable shard (missing, truncated, not a tar) is skipped
                on_error(exn)
            if errors:
                self._skip("shard_errors", f"{url}: unreadable after {len(keys)} samples: {errors[-1]}")
            missing = self.expected.get(url, 0) - len(keys)
            if missing > 0:
                self.stats.add("samples_missing", missing)
            yield {}  # group_by_keys: never join samples across shards

    def decode(self, sample: dict[str, Any], *, rng: random.Random, generator: torch.Generator) -> dict | None:
        """One grouped tar sample → a training sample, or ``None`` (counted) when it cannot be used."""
        cfg = self.config
        name = f"{sample.get('__url__')}:{sample.get('__key__')}"
        audio_key = next((k for k in sample if k in _AUDIO_KEYS), None)
        if audio_key is None or "json" not in sample:
            self._skip("skipped_incomplete", f"{name}: needs an audio and a json member, has {sorted(sample)}")
            return None
        try:
            meta = SampleMeta.from_json_bytes(sample["json"], name + ".json")
        except ValueError as err:
            self._skip("skipped_metadata", str(err))
            return None
        if cfg.require_captions and not meta.captions:
            self._skip("skipped_no_caption", f"{name}: no caption")
            return None
        try:
            wave = self._read_clip(sample[audio_key], f"{name}.{audio_key}", generator)  # [S]
        except ValueError as err:
            self._skip("skipped_audio", str(err))
            return None
        clip = cfg.clip_samples
        length = min(wave.shape[-1], clip)
        crop = "random" if cfg.train else "center"
        wave = fit_length(wave, clip, pad=cfg.pad, crop=crop, generator=generator)  # [T]
        out = self._texts(meta, rng)
        out.update(audio=wave, length=length, labels=meta.labels, key=sample["__key__"], extra=meta.extra)
        self.stats.add("samples")
        return out

    def _read_clip(self, data: bytes, name: str, generator: torch.Generator) -> torch.Tensor:
        """Decode the audio of one sample at the model rate: [S] mono.

        Audio longer than the clip is cut while decoding (a seek, then one clip's worth of frames at the
        random or centre offset), so a 5-minute recording costs a 10-second decode.

        Raises:
            ValueError: undecodable, empty or non-finite audio.
        """
        cfg = self.config
        try:
            with sf.SoundFile(io.BytesIO(data)) as f:
                rate, frames, channels, pcm = f.samplerate, f.frames, f.channels, f.subtype.startswith("PCM")
                need = math.ceil(cfg.clip_samples * rate / cfg.sample_rate)  # source frames for one clip
                if frames > need:
                    if cfg.train:
                        f.seek(int(torch.randint(0, frames - need + 1, (1,), generator=generator)))
                    else:
                        f.seek((frames - need) // 2)
                window = f.read(min(frames, need), dtype="float32", always_2d=True)  # [S, C]
        except (sf.LibsndfileError, RuntimeError, TypeError) as err:
            raise ValueError(f"{name}: cannot decode audio ({err})") from err
        if pcm and channels == 1 and rate == cfg.sample_rate and len(window):
            # The writer's own format: integer PCM (never NaN), mono, at the model rate — nothing left to do.
            return torch.from_numpy(window[:, 0])
        mono = window[:, 0] if channels == 1 else window.mean(axis=1)
        return load_audio((mono, rate), cfg.sample_rate, name=name)

    def _texts(self, meta: SampleMeta, rng: random.Random) -> dict[str, Any]:
        cfg = self.config
        captions = meta.captions
        pick = rng.randrange(len(captions)) if cfg.train and len(captions) > 1 else 0
        caption = captions[pick] if captions else ""
        positives = list(meta.positives)
        if cfg.other_captions_as_positives:
            positives += [c for i, c in enumerate(captions) if i != pick]
        return {
            "caption": caption,
            "positives": self._subset(positives, cfg.max_positives, rng),
            "negatives": self._subset(meta.negatives, cfg.max_negatives, rng),
        }

    def _subset(self, items: list[str], k: int | None, rng: random.Random) -> list[str]:
        if k is None or len(items) <= k:
            return list(items)
        return rng.sample(items, k) if self.config.train else items[:k]


class ShardLoader(DataLoader):
    """A ``DataLoader`` that calls ``dataset.set_epoch`` before every pass, so each epoch reshuffles."""

    _passes: int = 0

    def __iter__(self):
        if isinstance(self.dataset, ShardReader):
            self.dataset.set_epoch(self._passes)
        self._passes += 1
        return super().__iter__()
