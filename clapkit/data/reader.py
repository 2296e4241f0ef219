"""The WebDataset reader: shards → decoded, cropped, captioned samples → collated batches.

Stages (webdataset's unless marked)::

    shard urls   SimpleShardList (order shuffled per epoch, the same on every rank and worker)
                 → split_by_node → split_by_worker            each shard read once per epoch
             or  ResampledShards (drawn with replacement, seeded per rank and worker; multi-node)
    tar members  tar_file_iterator, per shard (clapkit: counts unreadable shards and missing samples)
                 → group_by_keys
    shuffle      a buffer of still-encoded samples (training)
    batch        (clapkit) per sample: metadata → pick a caption → positives / negatives; the audio decoded
                 (only the clip's window of longer audio) → resampled → cropped / padded straight into its row
                 of the batch tensor (→ augmented, training only, with ``augment``), and the same for the
                 counterfactual audio when asked for
                 → :func:`clapkit.data.batch.collate`

Corrupt samples and shards never stop a run: they are skipped and counted in :class:`ReaderStats`,
which DataLoader workers share with the main process.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_iterator

from clapkit.audio import PadMode
from clapkit.augment import AugmentConfig, Augmenter, mix_seed
from clapkit.data.batch import batch_tensor, collate
from clapkit.data.decode import read_clip
from clapkit.data.files import AUDIO_EXTENSIONS
from clapkit.data.schema import COUNTERFACTUAL_PREFIX, MANIFEST_NAME, SampleMeta, load_manifest

__all__ = ["COUNTERS", "ReaderConfig", "ReaderStats", "ShardLoader", "ShardReader", "resolve_shards"]

log = logging.getLogger(__name__)

#: What :class:`ReaderStats` counts.
COUNTERS = (
    "shards",  # shards opened (a resampled shard counts each time it is drawn)
    "shard_errors",  # shards that could not be opened or read to the end
    "bad_members",  # malformed tar members (e.g. a duplicate name), dropped
    "samples",  # samples delivered
    "skipped_incomplete",  # audio or json member missing (e.g. cut by a truncated shard)
    "skipped_metadata",  # json that is not valid sample metadata
    "skipped_audio",  # audio or counterfactual audio that does not decode (or is empty / non-finite)
    "skipped_no_caption",  # no caption although captions are required
    "samples_missing",  # samples the manifest lists but the shard did not hold (lost to a truncation)
    "counterfactuals",  # samples delivered with counterfactual audio (when the reader decodes it)
)
_SKIPPED = tuple(c for c in COUNTERS if c.startswith("skipped_"))
_AUDIO_KEYS = frozenset(ext.lstrip(".") for ext in AUDIO_EXTENSIONS)
_COUNTERFACTUAL_KEYS = frozenset(COUNTERFACTUAL_PREFIX + ext for ext in _AUDIO_KEYS)
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
        counterfactuals: Also decode each sample's counterfactual audio (the ``counterfactual.flac`` member:
            a different scene made of the same events, an audio-side hard negative) into ``counterfactual``
            [B, T], with the same resampling and crop / pad rules as the main audio (its own random offset);
            off, the member is not even read.
        require_captions: Skip (and count) samples without a caption.
        drop_last: Drop the last, smaller batch of each worker.
        seed: Base seed of shard order, shuffling, crops and caption choice (mixed with epoch, rank, worker).
        augment: Augment each training clip after its crop / pad (:mod:`clapkit.augment`), seeded by
            (``seed``, epoch, sample key): the same sample gets the same view in the same epoch whatever the rank,
            worker or shuffle, and another view the next epoch. Its counterfactual audio gets the same draws, so
            the two still differ only in their composition. Ignored when ``train`` is off: evaluation audio is
            never augmented. ``None``: off.
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
    counterfactuals: bool = False
    require_captions: bool = True
    drop_last: bool = False
    seed: int = 0
    augment: AugmentConfig | None = None

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
        self._resume = 0
        self._warned: dict[str, int] = {}
        augment = self.config.augment if self.config.train else None
        self.augmenter = None if augment is None else Augmenter(augment)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Seed the next pass with ``epoch`` (shard order, shuffle, crops); :meth:`loader` calls this.

        Args:
            skip: Batches of that pass delivered before an interruption; the pass goes on after them
                (see :meth:`pipeline`). Later passes start from their beginning.
        """
        self.epoch, self._resume = epoch, skip

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, skip = self.epoch, self._resume
        self.epoch, self._resume = epoch + 1, 0  # a persistent worker's copy advances on its own
        return iter(self.pipeline(epoch, skip))

    def loader(self, num_workers: int = 2, **kwargs: Any) -> ShardLoader:
        """A DataLoader over this reader that advances the epoch on every pass (batches come collated)."""
        kwargs.setdefault("persistent_workers", False)
        return ShardLoader(self, batch_size=None, num_workers=num_workers, **kwargs)

    def batches_per_rank(self, world: int, workers: int) -> list[int] | None:
        """The batches each of ``world`` ranks reads in one evaluation pass, from the manifest's sample counts.

        Mirrors the split of an unshuffled pass (shards dealt to ranks in turn, then to each rank's ``workers``
        DataLoader workers in turn; every worker batches its own samples). Skipped samples can only make a
        rank's count smaller. ``None`` for training passes (shuffled, resampled) and shards without a manifest.
        """
        cfg = self.config
        if cfg.train or cfg.resampled or any(url not in self.expected for url in self.urls):
            return None
        batches = (lambda n: n // cfg.batch_size) if cfg.drop_last else (lambda n: -(-n // cfg.batch_size))
        workers = max(1, workers)
        counts = []
        for rank in range(world):
            mine = self.urls[rank::world]
            counts.append(sum(batches(sum(self.expected[u] for u in mine[w::workers])) for w in range(workers)))
        return counts

    def padding_batch(self) -> dict[str, Any]:
        """One silent clip marked ``padding: True``: what a rank whose share ran out runs so that every rank makes
        the same forward passes (see :attr:`ShardLoader.pad_to`); its outputs must not enter any metric."""
        clip = self.config.clip_samples
        item = {"length": clip, "caption": "", "positives": [], "negatives": [], "labels": [], "key": "", "extra": {}}
        counterfactual = None
        if self.config.counterfactuals:
            item["counterfactual_length"], counterfactual = 0, torch.zeros(1, clip)
        return {**collate([item], torch.zeros(1, clip), counterfactual), "padding": True}

    # ------------------------------------------------------------------------------------------------ stages

    def pipeline(self, epoch: int = 0, skip: int = 0) -> wds.DataPipeline:
        """The webdataset pipeline of one pass, for the calling rank and worker.

        Args:
            epoch: Seeds the shard order, the shuffle, the crops and the caption choice.
            skip: Batches of this pass that this rank's DataLoader delivered before an interruption (DataLoader
                workers take turns, so this worker made every ``workers``-th of them). With ``resampled`` the rest
                of the pass is drawn from a new seed (and is as much shorter, with ``epoch_samples``): reading
                past a long stream would cost as long as reading it. Otherwise the worker reads past its share of
                samples without decoding them, so the pass goes on with the batches that came next (exactly so
                unless corrupt samples were skipped before the interruption or the number of workers changed;
                several workers take turns from worker 0 again, so those batches may come in another order; crops
                and caption choices are drawn afresh).
        """
        cfg = self.config
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        done = max(0, math.ceil((skip - worker) / max(1, workers)))  # this worker's batches before the interruption
        resumed = (skip,) if skip and cfg.resampled else ()  # a new draw for the rest of a resampled pass
        shared_seed = wds.utils.make_seed(cfg.seed, epoch, *resumed)  # equal on all ranks/workers: the splits agree
        own_seed = wds.utils.make_seed(cfg.seed, epoch, rank, worker, *resumed)
        if cfg.resampled:
            stages: list[Any] = [wds.ResampledShards(self.urls, seed=shared_seed, deterministic=True)]
        else:
            order_seed = shared_seed if cfg.train else None
            stages = [wds.SimpleShardList(self.urls, seed=order_seed), wds.split_by_node, wds.split_by_worker]
        stages += [self._tar_members, partial(group_by_keys, handler=self._bad_member)]
        if cfg.train and cfg.shuffle_buffer > 1:
            initial = min(cfg.shuffle_initial, cfg.shuffle_buffer)
            stages.append(wds.shuffle(cfg.shuffle_buffer, initial, rng=random.Random(own_seed)))
        if done and not cfg.resampled:
            stages.append(wds.slice(done * cfg.batch_size, None))  # still encoded: only the tar bytes are read
        rng, gen = random.Random(own_seed + 1), torch.Generator().manual_seed(own_seed)
        stages.append(partial(self.batches, rng=rng, generator=gen, epoch=epoch))
        if cfg.resampled and cfg.epoch_samples is not None:
            per_worker = math.ceil(cfg.epoch_samples / (world * max(1, workers) * cfg.batch_size))
            stages.append(wds.slice(max(0, per_worker - done)))
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
        select = None if self.config.counterfactuals else _not_counterfactual
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
                    for member in tar_file_iterator(stream, handler=on_error, select_files=select):
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

    def batches(
        self, samples: Iterable[dict[str, Any]], *, rng: random.Random, generator: torch.Generator, epoch: int = 0
    ) -> Iterator[dict[str, Any]]:
        """Grouped tar samples → collated batches of ``batch_size`` usable samples (the last one may be short).

        Each clip is decoded straight into its row of the batch tensor (webdataset's ``batched`` would stack
        per-sample tensors): one allocation and one copy less per clip, ~10 % of the cost of a 10 s clip,
        whose FLAC decoding is most of the rest. A sample that cannot be used leaves its row to the next one.
        """
        cfg = self.config
        size, clip = cfg.batch_size, cfg.clip_samples
        items: list[dict[str, Any]] = []
        audio = counterfactual = None
        for sample in samples:
            if audio is None:
                audio = batch_tensor(size, clip)  # [B, T]
                counterfactual = batch_tensor(size, clip) if cfg.counterfactuals else None  # [B, T]
            row = len(items)
            cf_row = None if counterfactual is None else counterfactual[row]
            item = self.decode(
                sample, rng=rng, generator=generator, out=audio[row], counterfactual_out=cf_row, epoch=epoch
            )
            if item is None:
                continue
            items.append(item)
            if len(items) == size:
                yield collate(items, audio, counterfactual)
                items, audio = [], None
        if items and not cfg.drop_last:
            n = len(items)
            yield collate(items, audio[:n], None if counterfactual is None else counterfactual[:n])

    def decode(
        self,
        sample: dict[str, Any],
        *,
        rng: random.Random,
        generator: torch.Generator,
        out: torch.Tensor | None = None,
        counterfactual_out: torch.Tensor | None = None,
        epoch: int = 0,
    ) -> dict | None:
        """One grouped tar sample → a training sample, or ``None`` (counted) when it cannot be used.

        Args:
            sample: Tar members by extension (``flac``, ``json``, ``counterfactual.flac`` …), ``__key__``, ``__url__``.
            rng: Caption and positive / negative choice.
            generator: Crop offsets.
            out: Where the clip goes [T = clip_samples]; ``None`` puts a new tensor in the result's ``audio``.
            counterfactual_out: The same for the counterfactual audio, with ``counterfactuals`` on.
            epoch: Seeds the augmentation (with ``augment``), with the reader's seed and the sample key.

        Returns:
            ``caption``, ``positives``, ``negatives``, ``labels``, ``key``, ``extra``, ``length`` (real samples of
            the clip); ``audio`` when ``out`` is ``None``; with ``counterfactuals`` on ``counterfactual_length``
            (0: the sample has none, its row is zeros) and, when ``counterfactual_out`` is ``None``,
            ``counterfactual``.
        """
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
        result: dict[str, Any] = {}
        if out is None:
            out = result["audio"] = torch.empty(cfg.clip_samples)
        augment_seed = mix_seed(cfg.seed, epoch, sample["__key__"])
        try:
            length = self._read_clip(sample[audio_key], f"{name}.{audio_key}", out, generator, augment_seed)
            if cfg.counterfactuals:
                if counterfactual_out is None:
                    counterfactual_out = result["counterfactual"] = torch.empty(cfg.clip_samples)
                cf_key = next((k for k in sample if k in _COUNTERFACTUAL_KEYS), None)
                if cf_key is None:
                    counterfactual_out.zero_()
                    result["counterfactual_length"] = 0
                else:
                    data = sample[cf_key]
                    cf_length = self._read_clip(data, f"{name}.{cf_key}", counterfactual_out, generator, augment_seed)
                    result["counterfactual_length"] = cf_length
        except ValueError as err:
            self._skip("skipped_audio", str(err))
            return None
        result.update(self._texts(meta, rng))
        result.update(length=length, labels=meta.labels, key=sample["__key__"], extra=meta.extra)
        self.stats.add("samples")
        if result.get("counterfactual_length"):
            self.stats.add("counterfactuals")
        return result

    def _read_clip(
        self, data: bytes, name: str, out: torch.Tensor, generator: torch.Generator, augment_seed: int
    ) -> int:
        """:func:`~clapkit.data.decode.read_clip` at this reader's rate and padding; random crops when training;
        then the augmentation of ``augment_seed`` over the whole window (padding included: what the model hears)."""
        cfg = self.config
        length = read_clip(
            data, name, out, sample_rate=cfg.sample_rate, pad=cfg.pad, random_crop=cfg.train, generator=generator
        )
        if self.augmenter is not None:
            out.copy_(self.augmenter(out, cfg.sample_rate, seed=augment_seed, name=name))
        return length

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


def _not_counterfactual(fname: str) -> bool:
    """``tar_file_iterator`` filter that leaves the counterfactual audio members unread."""
    extension = base_plus_ext(fname)[1]
    return extension is None or not extension.startswith(COUNTERFACTUAL_PREFIX)


class ShardLoader(DataLoader):
    """A ``DataLoader`` that calls ``dataset.set_epoch`` before every pass, so each epoch reshuffles.

    Passes count from 0, or from the epoch given to :meth:`set_epoch`. The loader is stateful in Lightning's sense
    (``state_dict`` / ``load_state_dict``): Lightning stores its state in every checkpoint and restores it on
    resume, so a run resumed in epoch 5 reads epoch 5's shard order and shuffle, not epoch 0's again, and goes on
    after the batches of that epoch it had used (see :meth:`ShardReader.pipeline`).

    Attributes:
        consumed: Batches of the pass in progress the consumer has used, for :meth:`state_dict`; a trainer that
            fetches batches ahead sets it to its own count (``None``: every batch delivered counts as used).
    """

    consumed: Callable[[], int] | None = None
    #: Deliver exactly this many batches per pass (evaluation with several ranks: all must run the same number of
    #: forward passes, since FSDP gathers parameters in each): batches past it are dropped with a warning, and a
    #: pass that ends short is filled with ``padding()`` batches (``None``: deliver what the pass reads).
    pad_to: int | None = None
    padding: Callable[[], dict[str, Any]] | None = None
    _passes: int = 0  # epoch of the next pass
    _skip: int = 0  # batches the next pass leaves out (a resumed pass)
    _current: int | None = None  # epoch of the pass in progress; None once it has run to its end
    _delivered: int = 0  # batches of the pass in progress delivered so far (those left out included)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Make the next pass epoch ``epoch``, going on after its first ``skip`` batches; later passes count on."""
        if epoch < 0 or skip < 0:
            raise ValueError(f"epoch={epoch}, skip={skip}: both count from 0")
        self._passes, self._skip, self._current = epoch, skip, None

    @property
    def epoch(self) -> int:
        """The epoch a resumed run reads first: the pass in progress, else the next one."""
        return self._passes if self._current is None else self._current

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": …, "batches": …}``: :attr:`epoch` and the batches of it used so far."""
        if self._current is None:
            return {"epoch": self._passes, "batches": self._skip}
        used = self._delivered if self.consumed is None else min(self._delivered, int(self.consumed()))
        return {"epoch": self._current, "batches": used}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`."""
        self.set_epoch(int(state["epoch"]), int(state.get("batches", 0)))

    def __iter__(self) -> Iterator[Any]:
        epoch, skip = self._passes, self._skip
        if isinstance(self.dataset, ShardReader):
            self.dataset.set_epoch(epoch, skip)
        self._passes, self._skip, self._current, self._delivered = epoch + 1, 0, epoch, skip
        return self._pass(super().__iter__(), epoch)

    def _pass(self, batches: Iterator[Any], epoch: int) -> Iterator[Any]:
        delivered = 0
        for batch in batches:
            if self.pad_to is not None and delivered >= self.pad_to:
                log.warning("%d batches per pass expected (the manifest's counts); later batches dropped", delivered)
                break
            if self._current == epoch:
                self._delivered += 1
            delivered += 1
            yield batch
        if self.pad_to is not None and delivered < self.pad_to:
            if self.padding is None:
                raise ValueError("ShardLoader.pad_to needs ShardLoader.padding (a function that makes a padding batch)")
            for _ in range(self.pad_to - delivered):
                yield self.padding()
        if self._current == epoch:
            self._current = None
