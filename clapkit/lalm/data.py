"""Conversation samples: audio clips + a list of turns, read from shards or JSONL, collated for the LLM.

Shards use the clapkit layout (``clapkit.data``): ``<key>.flac`` + ``<key>.json`` whose ``conversation``
field holds the turns (``{"role", "content"}``; each ``<Audio>`` marker in a turn stands for one clip).
Further clips of the same conversation are members ``<key>.1.flac``, ``<key>.2.flac``, … in marker order;
a sample with no audio member is a text-only conversation (replay data against forgetting). The other
JSON fields (``captions``, ``labels``, ``task``, ``choices`` …) stay available as ``meta``.

Write such shards with ``clapkit shards write --from conversations.jsonl --out DIR --allow-no-caption`` (one
clip per line: ``{"audio": "clip.wav", "conversation": [...]}``).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import IterableDataset, Sampler

from clapkit.audio import AudioSource, load_audio
from clapkit.data.files import AUDIO_EXTENSIONS
from clapkit.data.reader import ReaderStats, resolve_shards
from clapkit.data.schema import SampleMeta
from clapkit.lalm.chat import IGNORE_INDEX, ChatFormatter, count_audio, normalize_messages

__all__ = [
    "ConversationCollator",
    "ConversationReader",
    "ConversationSample",
    "LengthGroupedBatchSampler",
    "decode_conversation",
    "read_conversation_jsonl",
    "replay_mix",
    "write_text_conversations",
]

log = logging.getLogger(__name__)

_AUDIO_EXTS = tuple(sorted(e.lstrip(".") for e in AUDIO_EXTENSIONS))


@dataclass
class ConversationSample:
    """One conversation.

    Attributes:
        key: Sample id.
        messages: Turns ``{"role", "content"}`` with one ``<Audio>`` marker per clip.
        audio: Mono waveforms [S] at the encoder's rate, in marker order.
        meta: The other metadata fields (``captions``, ``labels``, ``task``, ``choices``, ``answer`` …).
        features: Instead of ``audio``: each clip's encoder frame features [T, D] (``audio_sequence`` output,
            computed once for a frozen encoder, e.g. with ``audio_sequence_from_tower``), in marker order.
    """

    key: str
    messages: list[dict[str, str]]
    audio: list[torch.Tensor] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    features: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.messages = normalize_messages(self.messages, self.key)
        if self.audio and self.features:
            raise ValueError(f"{self.key}: give the clips as audio or as features, not both")
        markers, clips = count_audio(self.messages), len(self.audio) + len(self.features)
        if markers != clips:
            raise ValueError(
                f"{self.key}: the conversation has {markers} <Audio> markers but {clips} clips; "
                "put one marker in the turns for each clip"
            )

    @classmethod
    def from_sources(
        cls,
        key: str,
        messages: list[dict[str, str]],
        audio: Sequence[AudioSource],
        sample_rate: int,
        meta: dict[str, Any] | None = None,
    ) -> ConversationSample:
        """Build a sample from audio sources (paths, bytes, arrays at ``sample_rate``, ``(array, rate)``)."""
        waves = [load_audio(a, sample_rate, name=f"{key} clip {i}") for i, a in enumerate(audio)]
        return cls(key, messages, waves, dict(meta or {}))

    def prompt(self) -> tuple[list[dict[str, str]], str | None]:
        """The turns before the final assistant answer, and that answer (``None`` if the last turn is not one)."""
        if self.messages[-1]["role"] == "assistant":
            return self.messages[:-1], self.messages[-1]["content"]
        return self.messages, None


def _audio_members(sample: dict[str, Any]) -> list[str]:
    """Audio member names in clip order: ``flac`` (any audio extension), then ``1.flac``, ``2.flac`` …"""
    first = [k for k in sample if k in _AUDIO_EXTS]
    numbered = []
    for k in sample:
        head, _, ext = k.partition(".")
        if ext in _AUDIO_EXTS and head.isdigit():
            numbered.append((int(head), k))
    return first[:1] + [k for _, k in sorted(numbered)]


def decode_conversation(
    sample: dict[str, Any], sample_rate: int, stats: ReaderStats | None = None
) -> ConversationSample | None:
    """A grouped tar sample → ``ConversationSample``, or ``None`` (counted in ``stats``) when unusable."""
    name = f"{sample.get('__url__')}:{sample.get('__key__')}"

    def skip(counter: str, message: str) -> None:
        if stats is not None:
            stats.add(counter)
        log.warning("%s (%s)", message, counter)

    if "json" not in sample:
        skip("skipped_incomplete", f"{name}: no json member")
        return None
    try:
        meta = SampleMeta.from_json_bytes(sample["json"], name + ".json").to_dict()
        turns = meta.pop("conversation", None)
        if turns is None:
            raise ValueError(f"{name}.json: no 'conversation' field; expected a list of turns")
        messages = normalize_messages(turns, name)
    except ValueError as err:
        skip("skipped_metadata", str(err))
        return None
    try:
        waves = [load_audio(sample[k], sample_rate, name=f"{name}.{k}") for k in _audio_members(sample)]
    except ValueError as err:
        skip("skipped_audio", str(err))
        return None
    try:
        out = ConversationSample(str(sample["__key__"]), messages, waves, meta)
    except ValueError as err:
        skip("skipped_metadata", str(err))
        return None
    if stats is not None:
        stats.add("samples")
    return out


def read_conversation_jsonl(path: str | Path, sample_rate: int) -> Iterator[ConversationSample]:
    """Conversations from JSONL lines ``{"audio": path | [paths] | absent, "conversation": [...], ...}``.

    Relative audio paths are relative to the file's folder; audio is decoded lazily, line by line.

    Raises:
        ValueError: a line that is not a valid conversation (naming the line).
    """
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            origin = f"{path}:{number}"
            try:
                raw = json.loads(line)
            except ValueError as err:
                raise ValueError(f"{origin}: invalid JSON ({err})") from err
            if not isinstance(raw, dict) or "conversation" not in raw:
                raise ValueError(f"{origin}: expected an object with a 'conversation' list of turns")
            audio = raw.pop("audio", None)
            audio = [] if audio is None else [audio] if isinstance(audio, str) else list(audio)
            audio = [str(p) if Path(p).is_absolute() else str(path.parent / p) for p in audio]
            key = str(raw.pop("key", raw.get("id", f"{path.stem}-{number}")))
            messages = raw.pop("conversation")
            yield ConversationSample.from_sources(key, messages, audio, sample_rate, raw)


class ConversationCollator:
    """Conversation samples → one model batch.

    Training batches are right-padded and carry labels; generation batches (``generation=True``) hold the
    turns before each final assistant answer as a left-padded prompt and keep that answer as a reference.

    Args:
        formatter: Chat template and label masking.
        pad_id: Token id used for padding.
        sample_rate: Rate of the clips (Hz), used for ``max_audio_seconds``.
        max_audio_seconds: Longer clips are cut to this (s); ``None`` keeps them whole.
        generation: Build prompts for generation instead of training examples.

    Returns (``__call__``):
        ``input_ids`` [B, L], ``attention_mask`` [B, L], ``labels`` [B, L] (training), ``audio`` [C, S]
        zero-padded clips of all samples in order, ``audio_lengths`` [C], ``keys``, ``meta``, and with
        ``generation``: ``references`` (B answers or ``None``). Samples that carry ``features`` instead of audio
        give ``audio_features`` [C, T, D] (zero-padded) and ``audio_features_mask`` [C, T] instead of ``audio``
        and ``audio_lengths`` (``max_audio_seconds`` does not apply to them).
    """

    def __init__(
        self,
        formatter: ChatFormatter,
        pad_id: int,
        sample_rate: int,
        *,
        max_audio_seconds: float | None = None,
        generation: bool = False,
    ) -> None:
        self.formatter = formatter
        self.pad_id = pad_id
        self.max_samples = round(max_audio_seconds * sample_rate) if max_audio_seconds else None
        self.generation = generation

    def __call__(self, samples: Sequence[ConversationSample]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty list of conversations")
        with_features = any(s.features for s in samples)
        if with_features and any(s.audio for s in samples):
            raise ValueError("a batch mixes conversations with audio and with precomputed features; use one kind")
        rows, clips, references = [], [], []
        for s in samples:
            if self.generation:
                messages, answer = s.prompt()
                enc = self.formatter.encode_prompt(messages)
                references.append(answer)
            else:
                enc = self.formatter.encode(s.messages)
            own = s.features if with_features else s.audio
            # A prompt cut from the left keeps its last clips; a conversation cut from the right its first ones.
            keep = own[len(own) - enc.num_audio :] if self.generation else own[: enc.num_audio]
            clips.extend(keep)
            rows.append(enc)
        width = max(len(r.input_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r.input_ids)
            span = slice(width - n, width) if self.generation else slice(0, n)
            ids[i, span] = torch.tensor(r.input_ids)
            mask[i, span] = 1
            labels[i, span] = torch.tensor(r.labels)
        out: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if with_features:
            out["audio_features"], out["audio_features_mask"] = _pad_features(clips)
        else:
            out["audio"], out["audio_lengths"] = self._pad_audio(clips)
        out["keys"] = [s.key for s in samples]
        out["meta"] = [s.meta for s in samples]
        if self.generation:
            out["references"] = references
        else:
            out["labels"] = labels
        return out

    def _pad_audio(self, clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.max_samples is not None:
            clips = [c[: self.max_samples] for c in clips]
        if not clips:
            return torch.zeros(0, 1), torch.zeros(0, dtype=torch.long)
        lengths = torch.tensor([c.shape[-1] for c in clips], dtype=torch.long)
        audio = torch.zeros(len(clips), int(lengths.max()))
        for i, c in enumerate(clips):
            audio[i, : c.shape[-1]] = c
        return audio, lengths


def _pad_features(clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame features [T_i, D] → zero-padded [C, T, D] and mask [C, T]."""
    lengths = torch.tensor([c.shape[0] for c in clips], dtype=torch.long)
    feats = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)
    return feats, torch.arange(feats.shape[1])[None, :] < lengths[:, None]


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of conversations of similar length, the batches in random order.

    A batch is padded to its longest conversation, and the LLM computes on the padding too: over randomly drawn
    conversations of 40-95 positions (an audio clip of 3-27 tokens, a short or a multiple-choice question) a quarter
    to a third of the positions are padding. The indices are drawn by transformers' ``get_length_grouped_indices``
    (a random permutation cut into mega-batches of ``mega_batch_mult`` batches, each sorted by length, the
    ``group_by_length`` of its ``Trainer``); the batches cut from them are then shuffled, so that a run does not
    walk from long to short conversations within every mega-batch.

    Args:
        lengths: Positions of each conversation (``AudioLanguageModel.sequence_length``); only their order matters.
        batch_size: Conversations per batch.
        drop_last: Leave out the last batch when it is short.
        mega_batch_mult: Batches per mega-batch (``None``: 50, or fewer so that there are at least four).
        generator: Random generator of the permutations (a seeded one repeats a run).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        drop_last: bool = True,
        mega_batch_mult: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if not lengths:
            raise ValueError("no conversations to batch")
        self.lengths, self.batch_size, self.drop_last = list(lengths), batch_size, drop_last
        self.mega_batch_mult, self.generator = mega_batch_mult, generator

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[list[int]]:
        from transformers.trainer_pt_utils import get_length_grouped_indices

        order = get_length_grouped_indices(self.lengths, self.batch_size, self.mega_batch_mult, self.generator)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        for i in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[i]


class ConversationReader(IterableDataset):
    """Conversations from shards: collated batches (with a ``collator``) or single samples (without).

    Run it in a ``DataLoader`` with ``batch_size=None``. Shards are split across ranks and workers (or drawn
    with replacement with ``resampled``); unusable samples are skipped and counted in ``stats`` (shared with
    DataLoader workers).

    Args:
        shards: A shard folder, manifest, brace pattern or list (``clapkit.data.reader.resolve_shards``).
        sample_rate: Rate of the encoder (Hz); clips are resampled to it.
        collator: Builds the batches; ``None`` yields ``ConversationSample`` s.
        batch_size: Conversations per batch.
        train: Shuffle shards and samples (seeded by ``seed`` and the epoch).
        resampled: Draw shards with replacement (an endless stream; bound it with ``itertools.islice``).
        shuffle_buffer: Conversations held for shuffling per worker.
        seed: Base seed.
        stats: Counters to add to.
        split_ranks: Split the shards across ranks (DDP). ``False``: every rank reads all of them (validation:
            each rank then takes the same steps, so the epoch-end reduction of the logged loss cannot stall on a
            rank that got fewer shards or none).
    """

    def __init__(
        self,
        shards: str | Path | Sequence[str | Path],
        sample_rate: int,
        *,
        collator: ConversationCollator | None = None,
        batch_size: int = 8,
        train: bool = True,
        resampled: bool = False,
        shuffle_buffer: int = 500,
        seed: int = 0,
        stats: ReaderStats | None = None,
        split_ranks: bool = True,
    ) -> None:
        super().__init__()
        self.urls, _ = resolve_shards(shards)
        self.split_ranks = split_ranks
        self.collator, self.batch_size, self.sample_rate = collator, batch_size, sample_rate
        self.train, self.resampled, self.shuffle_buffer, self.seed = train, resampled, shuffle_buffer, seed
        self.stats = stats or ReaderStats()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def samples(self, epoch: int = 0) -> wds.DataPipeline:
        """The pipeline of decoded ``ConversationSample`` s (unbatched) for the calling rank and worker."""
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        shared = wds.utils.make_seed(self.seed, epoch)
        if self.resampled:
            stages: list[Any] = [wds.ResampledShards(self.urls, seed=shared, deterministic=True)]
        else:
            seed = shared if self.train else None
            stages = [wds.SimpleShardList(self.urls, seed=seed)]
            stages += [wds.split_by_node, wds.split_by_worker] if self.split_ranks else [wds.split_by_worker]
        stages.append(wds.tarfile_to_samples(handler=self._shard_error))
        if self.train and self.shuffle_buffer > 1:
            rng = random.Random(wds.utils.make_seed(self.seed, epoch, rank, worker))
            stages.append(wds.shuffle(self.shuffle_buffer, min(100, self.shuffle_buffer), rng=rng))
        stages.append(wds.map(partial(decode_conversation, sample_rate=self.sample_rate, stats=self.stats)))
        stages.append(wds.select(lambda s: s is not None))
        return wds.DataPipeline(*stages)

    def _shard_error(self, exn: Exception) -> bool:
        self.stats.add("shard_errors")
        log.warning("unreadable shard data: %r (shard_errors)", exn)
        return True

    def __iter__(self) -> Iterator[Any]:
        epoch = self.epoch
        self.epoch += 1
        samples = iter(self.samples(epoch))
        if self.collator is None:
            return samples
        return iter(wds.batched(self.batch_size, collation_fn=self.collator, partial=True)(samples))


def replay_mix(
    primary: Iterable[Any], replay: Sequence[Iterable[Any]], ratio: float | Sequence[float], seed: int = 0
) -> Iterator[Any]:
    """Experience replay: interleave ``primary`` with replay streams so that ``ratio`` of the items are replay.

    Stops when the primary stream ends (replay streams are cycled as needed). Feed it unbatched samples
    (``ConversationReader.samples``) and batch afterwards, so every batch mixes both. (webdataset's
    ``RandomMix`` draws from the unseeded global ``random`` and stops at the first exhausted stream, so a
    run could not be repeated and a short replay set would end the epoch.)

    Args:
        primary: The stage-2 stream.
        replay: Streams to replay (stage-1 alignment data, text-only conversations …).
        ratio: Fraction of items drawn from replay overall (one value, split evenly), or one per stream.
        seed: Seed of the draws.
    """
    ratios = [ratio / len(replay)] * len(replay) if isinstance(ratio, (int, float)) else list(ratio)
    if len(ratios) != len(replay) or any(r < 0 for r in ratios) or sum(ratios) >= 1:
        raise ValueError(f"replay ratios {ratios}: need one non-negative ratio per replay stream, summing below 1")
    rng = random.Random(seed)
    iters = [iter(primary)] + [_cycle(r) for r in replay]
    weights = [1 - sum(ratios), *ratios]
    while True:
        source = rng.choices(range(len(iters)), weights)[0]
        try:
            yield next(iters[source])
        except StopIteration:
            if source == 0:
                return
            raise ValueError(f"replay stream {source - 1} is empty") from None


def _cycle(stream: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for item in stream:
            empty = False
            yield item
        if empty:
            return


def write_text_conversations(
    conversations: Sequence[Sequence[dict[str, str]]], out_dir: str | Path, *, max_count: int = 10_000
) -> Path:
    """Text-only conversations (no ``<Audio>`` marker) as shards ``conv-%06d.tar`` in ``out_dir``, which
    ``ConversationReader`` reads (e.g. ``data.text_shards`` for replay). The folder is written under a temporary
    name and renamed into place, so it is complete or absent.

    Raises:
        ValueError: A conversation that is malformed or references audio, or none at all.
    """
    if not conversations:
        raise ValueError(f"{out_dir}: no conversations to write")
    for i, turns in enumerate(conversations):
        messages = normalize_messages(list(turns), f"conversation {i}")
        if count_audio(messages):
            raise ValueError(f"conversation {i}: has <Audio> markers; text-only shards carry no audio")
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    with wds.ShardWriter(str(tmp / "conv-%06d.tar"), maxcount=max_count, verbose=0) as sink:
        for i, turns in enumerate(conversations):
            sink.write({"__key__": f"t{i:07d}", "json": json.dumps({"conversation": list(turns)}).encode()})
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
