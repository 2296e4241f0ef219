"""``python -m train demo [-c configs/demo.yaml] [--fresh]``: the main job end to end on real audio.

Steps (each prints what it made and how long it took; a finished step is reused by the next run when its inputs
and settings are unchanged — ``--fresh`` starts from nothing):

1. **data** — ``clapkit.datasets`` builds ``debian-sounds``: labelled clips from Debian packages, split by recording.
2. **scenes** — the scene composer makes training scenes from the *training* clips only, with the ``train``
   template pool, the paraphrase lexicon and several phrasings per class; scenes that would combine a held-out
   class pair are dropped.
3. **benchmark** — CompA-order and CompA-attribute CSV files composed from the *test* clips only, over the
   held-out class pairs, with the ``test`` template pool (connectives training never used), and a retrieval
   listing of those scenes.
4. **shards** — training scenes (and the training clips) written as WebDataset shards.
5. **features** — the frozen towers run once: aisfx frames of every training window (read back from the shards),
   counterfactual, benchmark and held-out clip; MiniLM tokens of every caption. Training and evaluation then run
   only the heads and projections.
6. **train** — ``clapkit-small`` trained once per arm (``infonce``, ``compa_hardneg``) on the same data, steps and
   seed with the training app's ``ClapModule`` (Lightning), saved with ``save_pretrained``.
7. **evaluate** — each saved model: zero-shot top-1 on the held-out clips, retrieval R@k on the held-out scenes,
   compositional text / audio / group scores, side by side with chance; ``results.json`` and ``results.png``.
8. **search** — an ``AudioIndex`` over the held-out clips, queried by text and by a training clip.

Everything is configured by ``configs/demo.yaml``; outputs go to its ``out_dir`` (``runs/demo``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import random
import resource
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

import clapkit
from clapkit.compose.benchmark import (
    BENCHMARK_KINDS,
    hold_out_pairs,
    preload_clips,
    scene_pairs,
    training_records,
    write_compositional_benchmark,
    write_scenes,
)
from clapkit.compose.scenes import ComposerConfig, EventClip, EventPhrase, SceneComposer
from clapkit.data.inputs import read_jsonl
from clapkit.data.reader import ReaderConfig, ShardReader
from clapkit.data.schema import load_manifest
from clapkit.data.writer import WriterConfig, parse_size, write_shards
from clapkit.datasets import DATASETS
from clapkit.evaluate.compositional import load_compa_csv
from clapkit.evaluate.retrieval import load_retrieval_set
from clapkit.evaluate.suite import (
    COMPARISON_METRICS,
    EvalSets,
    evaluate_stored,
    format_comparison,
    save_comparison_chart,
)
from clapkit.evaluate.zeroshot import LabelledAudio
from clapkit.feature_store import (
    FeatureStore,
    audio_features,
    embed_audio_features,
    embed_text_features,
    file_windows,
    text_features,
)
from clapkit.index import AudioIndex
from clapkit.io import atomic_write_json, atomic_write_text
from clapkit.model import ClapModel
from train.clap import ClapModule
from train.demo_lalm import LALM_METRICS, LalmSection, run_lalm
from train.optim import OptimConfig, ParamGroup

__all__ = ["Demo", "DemoConfig", "StoredFeatureClapModule", "StoredFeatureData", "TrainSample", "main"]

#: A file in ``out_dir`` that marks it as the demo's, so ``--fresh`` never deletes a folder it did not make.
OUT_MARKER = ".clapkit-demo"
DONE = ".done.json"


# ---------------------------------------------------------------------------------------------------- config
@dataclass
class DataSection:
    dataset: str = "debian-sounds"  # a clapkit.datasets builder
    dataset_dir: str | None = None  # an existing folder with train.jsonl / test.jsonl instead of a build


@dataclass
class ModelSection:
    name: str = "clapkit-small"
    pretrained: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScenesSection:
    count: int = 1200  # training scenes kept
    held_out_pair_fraction: float = 0.2  # of all class pairs, combined by the benchmark only
    single_clips: bool = True  # the training clips join the training shards
    counterfactual_samples: bool = True  # each counterfactual is a training sample too (compose.training_records)
    composer: dict[str, Any] = field(default_factory=dict)  # ComposerConfig fields (sample_rate: the model's)


@dataclass
class BenchmarkSection:
    compa_order: int = 500  # rows
    compa_attribute: int = 300  # rows


@dataclass
class ShardsSection:
    shard_size: str = "256MB"
    workers: int = 2
    bits: int = 24  # the scene FLACs are 24-bit: training audio and counterfactuals quantised alike


@dataclass
class FeaturesSection:
    batch_size: int = 16  # windows per audio-tower pass
    channels_last: bool = True
    text_batch_size: int = 256


@dataclass
class ArmSection:
    loss: str  # clapkit.losses.LOSSES name
    negatives: bool = False  # hard-negative captions
    audio_negatives: bool = False  # counterfactual audio
    positives: bool = False  # paraphrase positives as a loss input (losses that take them)
    loss_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainSection:
    steps: int = 1500
    batch_size: int = 128
    max_negatives: int = 4
    caption_source: str = "all"  # "all": caption + paraphrase positives; "first": the composed caption only
    clip_repeats: int = 1  # single-clip samples (no counterfactual) appear this many times per epoch
    precision: str = "bf16-mixed"  # Lightning precision; bf16 autocast runs the heads ~3x faster on AVX512-BF16 CPUs
    optimizer: dict[str, Any] = field(default_factory=dict)  # train.optim.OptimConfig fields
    arms: dict[str, ArmSection] = field(default_factory=dict)


@dataclass
class EvaluateSection:
    zeroshot_templates: list[str] = field(default_factory=lambda: list(clapkit.zeroshot.DEFAULT_TEMPLATES))


@dataclass
class SearchSection:
    model: str = "compa_hardneg"  # the arm whose model the index uses
    text_queries: list[str] = field(default_factory=list)
    audio_query_class: str | None = None  # a training clip of this class queries the index of held-out clips
    k: int = 5


@dataclass
class DemoConfig:
    """``configs/demo.yaml``; see the comments there for each value and the time arithmetic."""

    out_dir: str = "runs/demo"
    seed: int = 0
    threads: int = 2
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    phrases: dict[str, list[list[str]]] = field(default_factory=dict)
    scenes: ScenesSection = field(default_factory=ScenesSection)
    benchmark: BenchmarkSection = field(default_factory=BenchmarkSection)
    shards: ShardsSection = field(default_factory=ShardsSection)
    features: FeaturesSection = field(default_factory=FeaturesSection)
    train: TrainSection = field(default_factory=TrainSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    search: SearchSection = field(default_factory=SearchSection)
    lalm: LalmSection = field(default_factory=LalmSection)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DemoConfig:
        config = _build(cls, raw, "demo config")
        config.train.arms = {
            name: _build(ArmSection, arm, f"train.arms.{name}") for name, arm in (config.train.arms or {}).items()
        }
        if not config.train.arms:
            raise ValueError("demo config: train.arms is empty; give at least one arm (name: {loss: ...})")
        if config.train.caption_source not in ("all", "first"):
            raise ValueError(f"train.caption_source={config.train.caption_source!r}: use 'all' or 'first'")
        return config

    @classmethod
    def load(cls, path: str | Path) -> DemoConfig:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such demo config; the default is configs/demo.yaml")
        return cls.from_dict(yaml.safe_load(path.read_text()) or {})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; valid keys: {sorted(fields)}")
    values = {}
    for name, value in raw.items():
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = _build(type(default), value, f"{where}.{name}")
        values[name] = value
    return cls(**values)


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------- training
@dataclass
class TrainSample:
    """One training sample on stored features.

    Attributes:
        key: Audio feature key of the clip.
        captions: Its captions: the composed caption first, then paraphrases (or a clip's other captions).
        negatives: Hard-negative captions.
        counterfactual: Audio feature key of the counterfactual scene, if any.
    """

    key: str
    captions: list[str]
    negatives: list[str] = field(default_factory=list)
    counterfactual: str | None = None


class _Samples(Dataset):
    """Draws a caption (and a negative subset) per visit; each draw is seeded by (seed, sample, visit), so every
    arm of one seed sees the same captions in the same order whatever its loss uses."""

    def __init__(
        self, samples: list[TrainSample], *, seed: int, caption_source: str, max_negatives: int, positives: bool
    ) -> None:
        self.samples = samples
        self.positives = positives
        self.seed = seed
        self.caption_source = caption_source
        self.max_negatives = max_negatives
        self.visits = [0] * len(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.samples[i]
        rng = random.Random(f"{self.seed}/{i}/{self.visits[i]}")
        self.visits[i] += 1
        pool = sample.captions if self.caption_source == "all" else sample.captions[:1]
        caption = pool[rng.randrange(len(pool))]
        negatives = list(sample.negatives)
        if len(negatives) > self.max_negatives:
            negatives = rng.sample(negatives, self.max_negatives)
        return {
            "key": sample.key,
            "caption": caption,
            "positives": [c for c in sample.captions if c != caption] if self.positives else [],
            "negatives": negatives,
            "counterfactual": sample.counterfactual,
        }


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "audio_keys": [it["key"] for it in items],
        "captions": [it["caption"] for it in items],
        "positives": [it["positives"] for it in items],
        "negatives": [it["negatives"] for it in items],
        "audio_negative_keys": [it["counterfactual"] for it in items],
    }


class StoredFeatureData(pl.LightningDataModule):
    """Batches of feature keys and captions for ``StoredFeatureClapModule``; epochs reshuffle (seeded)."""

    def __init__(
        self,
        samples: list[TrainSample],
        *,
        batch_size: int,
        seed: int,
        caption_source: str = "all",
        max_negatives: int = 4,
        positives: bool = False,
    ) -> None:
        super().__init__()
        self.positives = positives
        if len(samples) < batch_size:
            raise ValueError(f"train: {len(samples)} samples is less than one batch of {batch_size}; lower batch_size")
        self.samples = samples
        self.batch_size = batch_size
        self.seed = seed
        self.caption_source = caption_source
        self.max_negatives = max_negatives

    def train_dataloader(self) -> DataLoader:
        data = _Samples(
            self.samples,
            seed=self.seed,
            caption_source=self.caption_source,
            max_negatives=self.max_negatives,
            positives=self.positives,
        )
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            data, batch_size=self.batch_size, shuffle=True, drop_last=True, collate_fn=_collate, generator=generator
        )


class StoredFeatureClapModule(ClapModule):
    """``ClapModule`` whose frozen towers are replaced by stored outputs (``clapkit.feature_store``).

    Call ``use_features`` before training. Batches carry ``audio_keys`` (and ``audio_negative_keys`` for the
    counterfactual audio) instead of waveforms; captions are looked up in the text store.
    """

    audio_store: FeatureStore | None = None
    text_store: FeatureStore | None = None
    audio_negatives: bool = False

    def use_features(self, audio: FeatureStore, text: FeatureStore, *, audio_negatives: bool = False) -> None:
        if audio_negatives and "audio_negatives" not in self.loss_fn.inputs:
            raise ValueError(
                f"audio_negatives: the {type(self.loss_fn).__name__} loss takes no audio negatives; use compa_hardneg "
                "or compa_modular, or turn audio_negatives off"
            )
        self.audio_store, self.text_store, self.audio_negatives = audio, text, audio_negatives

    def encode_audio(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.model.audio_from_tower(self.audio_store.batch(batch["audio_keys"], self.device))

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.model.text_from_tower(self.text_store.batch(texts, self.device))

    def embed_batch(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = super().embed_batch(batch)
        if self.audio_negatives:
            keys = batch["audio_negative_keys"]
            rows = [i for i, k in enumerate(keys) if k]
            audio = out["audio_embeds"]
            embeds = audio.new_zeros(len(keys), 1, audio.shape[1])  # [B, 1, D]
            mask = torch.zeros(len(keys), 1, dtype=torch.bool, device=audio.device)  # [B, 1]
            if rows:
                embeds[rows, 0] = self.model.audio_from_tower(
                    self.audio_store.batch([keys[i] for i in rows], self.device)
                )
                mask[rows, 0] = True
            out["audio_negative_embeds"], out["audio_negative_mask"] = embeds, mask
        return out


# ---------------------------------------------------------------------------------------------------- the demo
class Demo:
    """The demo's steps over one config; each step returns a summary and is skipped when already done.

    Args:
        config: The demo config.
        progress: Progress bars.
        log: Where progress lines go.
    """

    def __init__(self, config: DemoConfig, *, progress: bool = True, log: Callable[[str], None] = print) -> None:
        self.config = config
        self.progress = progress
        self.log = log
        # Absolute: listings the demo writes name files by path, and a listing's relative paths are read as
        # relative to its own folder.
        self.out = Path(config.out_dir).resolve()
        self._given_dataset = Path(config.data.dataset_dir).resolve() if config.data.dataset_dir else None
        self.timings: dict[str, dict[str, float]] = {}
        self._model: ClapModel | None = None
        self._stores: tuple[FeatureStore, FeatureStore] | None = None
        self._fp: dict[str, str] = {}

    # -------------------------------------------------------------- bookkeeping
    def _step(self, name: str, fingerprint: str, folder: Path, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run ``run`` unless ``folder`` holds a finished result of the same fingerprint; time it."""
        self._fp[name] = fingerprint
        marker = folder / DONE
        if marker.is_file():
            done = json.loads(marker.read_text())
            if done.get("fingerprint") == fingerprint:
                self.log(f"[{name}] reused ({folder})")
                self.timings[name] = {"wall_s": 0.0, "cpu_s": 0.0, "reused": True}
                return done["result"]
        if folder.exists() and name != "data":
            shutil.rmtree(folder)  # a stale or half-finished step is redone from nothing
        folder.mkdir(parents=True, exist_ok=True)
        self.log(f"[{name}] …")
        wall, cpu = time.perf_counter(), _cpu_seconds()
        result = run()
        took = {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(_cpu_seconds() - cpu, 1)}
        self.timings[name] = took
        atomic_write_json(marker, {"fingerprint": fingerprint, "result": result})
        self.log(f"[{name}] done in {took['wall_s']:.1f} s wall, {took['cpu_s']:.1f} s CPU")
        return result

    def model(self) -> ClapModel:
        """The untrained architecture with its pretrained frozen towers (for the feature step)."""
        if self._model is None:
            m = self.config.model
            torch.manual_seed(self.config.seed)  # towers without pretrained weights start from the same draw
            self._model = clapkit.create_model(m.name, pretrained=m.pretrained, **m.overrides).eval()
        return self._model

    @property
    def sample_rate(self) -> int:
        m = self.config.model
        return clapkit.factory.get_model_config(m.name, **m.overrides).audio.sample_rate

    # -------------------------------------------------------------- 1. data
    def dataset(self) -> Path:
        cfg = self.config.data
        if cfg.dataset_dir:
            folder = self.dataset_dir
            for split in ("train", "test"):
                if not (folder / f"{split}.jsonl").is_file():
                    raise ValueError(f"data.dataset_dir: {folder} has no {split}.jsonl; build a dataset into it first")
            self._fp["data"] = _fingerprint(str(folder.resolve()))
            self.log(f"[data] using {folder}")
            return folder
        folder = self.out / "data" / cfg.dataset

        def build() -> dict[str, Any]:
            result = DATASETS.get(cfg.dataset)(folder, progress=self.progress)
            counts = result.counts()
            return {
                "classes": len(counts),
                "train": sum(c["train"] for c in counts.values()),
                "test": sum(c["test"] for c in counts.values()),
            }

        summary = self._step("data", _fingerprint(cfg.dataset), folder, build)
        self.log(f"        {summary['classes']} classes, {summary['train']} train / {summary['test']} test clips")
        return folder

    def records(self, split: str) -> list[dict[str, Any]]:
        folder = self.dataset_dir
        return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines() if line.strip()]

    @property
    def dataset_dir(self) -> Path:
        cfg = self.config.data
        return self._given_dataset or self.out / "data" / cfg.dataset

    def event_clips(self, split: str) -> list[EventClip]:
        """Every clip of a split once per configured phrasing of its class."""
        clips = []
        missing = set()
        for rec in self.records(split):
            path = str(self.dataset_dir / rec["audio"])
            variants = self.config.phrases.get(rec["class"])
            if not variants:
                missing.add(rec["class"])
                variants = [None]
            for v in variants:
                phrase = EventPhrase(*v) if v is not None else None
                clips.append(EventClip(path, rec["class"], phrase=phrase, source=rec["audio"]))
        if missing:
            warnings.warn(f"phrases: no phrasing for {sorted(missing)}; using the composer's default", stacklevel=2)
        return clips

    def composer_config(self) -> ComposerConfig:
        raw = dict(self.config.scenes.composer)
        for key in ("gap_seconds", "snr_db"):
            if key in raw:
                raw[key] = tuple(raw[key])
        return ComposerConfig(**{**raw, "sample_rate": self.sample_rate})

    def held_out_pairs(self) -> list[tuple[str, str]]:
        labels = {r["class"] for r in self.records("test")} & {r["class"] for r in self.records("train")}
        return hold_out_pairs(labels, self.config.scenes.held_out_pair_fraction, seed=self.config.seed)

    # -------------------------------------------------------------- 2. training scenes
    def scenes(self) -> dict[str, Any]:
        cfg = self.config.scenes
        folder = self.out / "scenes"
        fp = _fingerprint(self._fp["data"], cfg, self.config.phrases, self.sample_rate, self.config.seed)

        @_one_thread
        def make() -> dict[str, Any]:
            clips = preload_clips(self.event_clips("train"), self.sample_rate)
            composer = SceneComposer(clips, config=self.composer_config(), pool="train")
            held_out = self.held_out_pairs()
            info = write_scenes(
                composer, folder, cfg.count, seed=self.config.seed, avoid_pairs=held_out, progress=self.progress
            )
            scenes = [json.loads(line) for line in Path(info["listing"]).read_text().splitlines()]
            combined = set().union(*(scene_pairs(e["label"] for e in s["events"]) for s in scenes))
            leaked = combined & set(held_out)
            if leaked:
                raise RuntimeError(f"training scenes combine held-out pairs {sorted(leaked)[:3]}")
            records = training_records(
                scenes,
                folder,
                counterfactuals=cfg.counterfactual_samples,
                lexicon=composer.lexicon,
                num_positives=composer.config.num_positives,
                seed=self.config.seed,
            )
            lines = [json.dumps(r) for r in records]
            singles = 0
            if cfg.single_clips:
                for rec in self.records("train"):
                    fields = {k: rec[k] for k in ("captions", "labels", "duration")}
                    lines.append(json.dumps({"audio": str(self.dataset_dir / rec["audio"]), **fields, "kind": "clip"}))
                    singles += 1
            listing = atomic_write_text(folder / "train_listing.jsonl", "\n".join(lines) + "\n")
            kinds: dict[str, int] = {}
            for s in scenes:
                kinds[s["kind"]] = kinds.get(s["kind"], 0) + 1
            return {
                "listing": str(listing),
                "scenes": info["scenes"],
                "drawn": info["drawn"],
                "rejected": info["rejected"],
                "distinct_captions": info["captions"],
                "kinds": kinds,
                "single_clips": singles,
                "held_out_pairs": len(held_out),
                "pairs_combined": len(combined),
                "skipped_clips": len(composer.skipped),
            }

        s = self._step("scenes", fp, folder, make)
        self.log(
            f"        {s['scenes']} scenes {s['kinds']} from training clips + {s['single_clips']} single clips; "
            f"{s['rejected']} of {s['drawn']} drawn scenes dropped for combining a held-out pair; "
            f"{s['distinct_captions']} distinct captions (caption + paraphrases); "
            f"{s['pairs_combined']} class pairs combined, {s['held_out_pairs']} held out"
        )
        return s

    # -------------------------------------------------------------- 3. held-out benchmark
    def benchmark(self) -> dict[str, Any]:
        cfg = self.config.benchmark
        folder = self.out / "benchmark"
        counts = {name: getattr(cfg, name) for name in BENCHMARK_KINDS if getattr(cfg, name) > 0}
        fp = _fingerprint(
            self._fp["data"],
            counts,
            self.config.phrases,
            self.config.scenes.held_out_pair_fraction,
            self.config.scenes.composer,
            self.sample_rate,
            self.config.seed,
        )

        @_one_thread
        def make() -> dict[str, Any]:
            clips = preload_clips(self.event_clips("test"), self.sample_rate)
            info = write_compositional_benchmark(
                clips,
                folder,
                self.held_out_pairs(),
                counts=counts,
                config=self.composer_config(),
                seed=self.config.seed,
                progress=self.progress,
            )
            return {**counts, "pairs": info["pairs"], "skipped_clips": len(info["skipped_clips"])}

        s = self._step("benchmark", fp, folder, make)
        rows = ", ".join(f"{name} {s[name]} rows" for name in counts)
        self.log(f"        {rows} from test clips over {s['pairs']} held-out class pairs, test template pool")
        return s

    # -------------------------------------------------------------- 4. shards
    def shards(self) -> dict[str, Any]:
        cfg = self.config.shards
        folder = self.out / "shards"
        listing = self.out / "scenes" / "train_listing.jsonl"
        fp = _fingerprint(self._fp["scenes"], cfg, self.sample_rate)

        def make() -> dict[str, Any]:
            # Each counterfactual is a training sample of its own here (its audio is that sample's audio), so the
            # shards need not carry it a second time as a `counterfactual.flac` member.
            config = WriterConfig(
                shard_size=parse_size(cfg.shard_size),
                sample_rate=self.sample_rate,
                bits=cfg.bits,
                workers=cfg.workers,
                counterfactual_audio=False,
            )
            manifest = write_shards(read_jsonl(listing), folder, config, source=str(listing), progress=self.progress)
            return {"samples": manifest.total, "shards": len(manifest.shards), "skipped": manifest.skipped}

        s = self._step("shards", fp, folder, make)
        if s["skipped"] or not s["samples"]:
            # Every input is the demo's own: a skipped one is a defect, not bad data to step over.
            raise RuntimeError(
                f"shards: {s['skipped']} of {s['samples'] + s['skipped']} training samples skipped; "
                f"see {folder / 'report.json'}"
            )
        self.log(f"        {s['samples']} samples in {s['shards']} shard(s), {s['skipped']} skipped")
        return s

    # -------------------------------------------------------------- 5. frozen-tower features
    def eval_sets(self) -> EvalSets:
        folder = self.out / "benchmark"
        test = self.records("test")
        classes = sorted({r["labels"][0] for r in test})
        index = {c: i for i, c in enumerate(classes)}
        zeroshot = LabelledAudio(
            paths=[str(self.dataset_dir / r["audio"]) for r in test],
            targets=torch.tensor([index[r["labels"][0]] for r in test]).numpy(),
            classes=classes,
        )
        compositional = {
            name: load_compa_csv(folder / f"{name}.csv")
            for name in BENCHMARK_KINDS
            if (folder / f"{name}.csv").is_file()
        }
        return EvalSets(zeroshot, load_retrieval_set(folder / "retrieval.jsonl"), compositional)

    def features(self) -> dict[str, Any]:
        cfg = self.config.features
        folder = self.out / "features"
        fp = _fingerprint(self._fp["shards"], self._fp["benchmark"], self.config.model, cfg)

        def make() -> dict[str, Any]:
            model = self.model()
            audio_cfg = model.config.audio
            clip = audio_cfg.clip_samples
            options = {"channels_last": cfg.channels_last, "progress": self.progress}
            # Training windows, read back from the shards as the training reader would see them (centre crop / pad).
            samples: list[TrainSample] = []
            by_role: dict[tuple[str, str], str] = {}  # (scene, role) → feature key, to pair scene and counterfactual
            counterfactuals: dict[str, str] = {}  # feature key → counterfactual file that is not a shard sample
            reader = ShardReader(
                self.out / "shards",
                ReaderConfig.for_audio(
                    audio_cfg, batch_size=cfg.batch_size, train=False, other_captions_as_positives=True
                ),
            )

            def shard_batches():
                for batch in reader.loader(num_workers=0):
                    keys = [f"train/{k}" for k in batch["keys"]]
                    for key, caption, positives, negatives, extra in zip(
                        keys, batch["captions"], batch["positives"], batch["negatives"], batch["extra"]
                    ):
                        if "scene" in extra:
                            by_role[extra["scene"], extra["role"]] = key
                        captions = list(dict.fromkeys([caption, *positives]))
                        samples.append(TrainSample(key, captions, list(negatives), extra.get("counterfactual_audio")))
                    # Zero padding is masked out, repeat padding is content (as ClapModel.embed_audio).
                    lengths = batch["lengths"] if audio_cfg.pad == "zero" else torch.full_like(batch["lengths"], clip)
                    yield keys, batch["audio"], lengths

            total = load_manifest(self.out / "shards").total
            stores = {"train": audio_features(model, shard_batches(), total=total, **options)}
            # A sample's audio negative is its partner in the shards, or else its counterfactual file.
            partner = {
                key: by_role.get((scene, "counterfactual" if role == "scene" else "scene"))
                for (scene, role), key in by_role.items()
            }
            for sample in samples:
                if sample.counterfactual is not None:
                    path = sample.counterfactual
                    sample.counterfactual = partner.get(sample.key) or f"cf/{sample.key.split('/', 1)[1]}"
                    if sample.counterfactual.startswith("cf/"):
                        counterfactuals[sample.counterfactual] = path
            cf_keys = list(counterfactuals)
            stores["counterfactual"] = audio_features(
                model,
                file_windows([counterfactuals[k] for k in cf_keys], audio_cfg, keys=cf_keys, batch_size=cfg.batch_size),
                total=len(cf_keys),
                **options,
            )
            sets = self.eval_sets()
            eval_keys = sets.audio_keys()
            stores["eval"] = audio_features(
                model, file_windows(eval_keys, audio_cfg, batch_size=cfg.batch_size), total=len(eval_keys), **options
            )
            for name, store in stores.items():
                store.save(folder / f"audio_{name}.safetensors")
            texts = [t for s in samples for t in (*s.captions, *s.negatives)] + sets.texts()
            text = text_features(model, texts, batch_size=cfg.text_batch_size, progress=self.progress)
            text.save(folder / "text.safetensors")
            atomic_write_text(
                folder / "train_samples.jsonl", "".join(json.dumps(dataclasses.asdict(s)) + "\n" for s in samples)
            )
            return {
                "train_windows": len(stores["train"]),
                "counterfactual_windows": len(stores["counterfactual"]),
                "eval_windows": len(stores["eval"]),
                "texts": len(text),
            }

        s = self._step("features", fp, folder, make)
        self.log(
            f"        audio windows: {s['train_windows']} training, {s['counterfactual_windows']} counterfactual, "
            f"{s['eval_windows']} held-out; {s['texts']} distinct texts"
        )
        return s

    def stores(self) -> tuple[FeatureStore, FeatureStore]:
        """(audio, text) feature stores of the features step."""
        if self._stores is None:
            folder = self.out / "features"
            audio = FeatureStore.load(folder / "audio_train.safetensors")
            for name in ("counterfactual", "eval"):
                audio = audio.merge(FeatureStore.load(folder / f"audio_{name}.safetensors"))
            self._stores = (audio, FeatureStore.load(folder / "text.safetensors"))
        return self._stores

    def train_samples(self) -> list[TrainSample]:
        path = self.out / "features" / "train_samples.jsonl"
        return [TrainSample(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]

    # -------------------------------------------------------------- 6. training
    def fit(self, arm_name: str, *, seed: int, export_dir: Path, log_dir: Path | None = None) -> ClapModel:
        """Train one arm on the stored features and export it with ``save_pretrained`` to ``export_dir``."""
        cfg = self.config.train
        if arm_name not in cfg.arms:
            raise KeyError(f"unknown arm {arm_name!r}; configured arms: {', '.join(cfg.arms)}")
        arm = cfg.arms[arm_name]
        audio, text = self.stores()
        samples = self.train_samples()
        if not arm.negatives:
            samples = [dataclasses.replace(s, negatives=[]) for s in samples]
        samples += [s for s in samples if s.counterfactual is None] * (cfg.clip_repeats - 1)
        pl.seed_everything(seed, workers=True, verbose=False)
        m = self.config.model
        model = clapkit.create_model(m.name, pretrained=m.pretrained, **m.overrides)
        # The frozen towers must be those the stored features came from (they differ only without pretrained weights).
        model.audio_tower.load_state_dict(self.model().audio_tower.state_dict())
        model.text_tower.load_state_dict(self.model().text_tower.state_dict())
        module = StoredFeatureClapModule(
            model=model,
            loss=arm.loss,
            loss_args=arm.loss_args,
            optimizer=_optim_config(cfg.optimizer),
            export_dir=str(export_dir),
        )
        if arm.positives and "positives" not in module.loss_fn.inputs:
            raise ValueError(f"train.arms.{arm_name}.positives: the {arm.loss} loss takes no positives")
        module.use_features(audio, text, audio_negatives=arm.audio_negatives)
        data = StoredFeatureData(
            samples,
            batch_size=cfg.batch_size,
            seed=seed,
            caption_source=cfg.caption_source,
            max_negatives=cfg.max_negatives,
            positives=arm.positives,
        )
        log_dir = log_dir or export_dir.parent / f"{export_dir.name}_logs"
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=cfg.steps,
            max_epochs=-1,
            logger=CSVLogger(str(log_dir), name="", version=""),
            enable_checkpointing=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=max(1, min(50, cfg.steps // 10)),
            enable_progress_bar=self.progress,
            default_root_dir=str(log_dir),
            precision=cfg.precision,
        )
        with warnings.catch_warnings():
            # Frozen towers stay in eval mode on purpose; the batches come from the datamodule, the module only
            # declares hooks it shares with the shard-reading app; there is no validation set here.
            for message in (
                r"Found \d+ module\(s\) in eval mode",
                "You have overridden `on_before_batch_transfer`",
                "You defined a `validation_step` but have no `val_dataloader`",
                "The number of training batches .* is smaller than the logging interval",
                ".*isinstance.treespec, LeafSpec.*",
            ):
                warnings.filterwarnings("ignore", message=message)
            trainer.fit(module, datamodule=data)
        return module.model.eval()

    def arm_fingerprint(self, arm_name: str, seed: int) -> str:
        """What a trained arm depends on: the stored features, the model, the training settings, the arm, the seed."""
        common = {k: v for k, v in dataclasses.asdict(self.config.train).items() if k != "arms"}
        return _fingerprint(self._fp["features"], self.config.model, common, self.config.train.arms[arm_name], seed)

    def train(self) -> dict[str, Any]:
        results = {}
        for arm_name in self.config.train.arms:
            folder = self.out / "models" / arm_name
            fp = self.arm_fingerprint(arm_name, self.config.seed)

            def run(arm_name: str = arm_name, folder: Path = folder) -> dict[str, Any]:
                self.fit(arm_name, seed=self.config.seed, export_dir=folder / "model", log_dir=folder / "logs")
                return {"model": str(folder / "model")}

            results[arm_name] = self._step(f"train {arm_name}", fp, folder, run)
        return results

    # -------------------------------------------------------------- 7. evaluation
    def evaluate(self, models: dict[str, ClapModel], extra: dict[str, dict] | None = None) -> dict[str, dict]:
        """The suite for each model, printed side by side; ``results.json`` + ``results.png`` + ``table.txt``.

        ``extra``: more results per model (the LALM step's ``{"lalm": metrics}``), added as rows of the table.
        """
        audio, text = self.stores()
        sets = self.eval_sets()
        results = {
            name: evaluate_stored(model, audio, text, sets, templates=self.config.evaluate.zeroshot_templates)
            for name, model in models.items()
        }
        for name, more in (extra or {}).items():
            results[name].update(more)
        metrics = COMPARISON_METRICS + LALM_METRICS
        folder = self.out / "results"
        table = format_comparison(results, metrics)
        z = sets.zeroshot
        header = (
            f"held-out: zero-shot on {len(z.paths)} clips / {len(z.classes)} classes; retrieval on "
            f"{len(sets.retrieval.audio)} scenes; "
            + ", ".join(f"{name} {len(items)} pairs" for name, items in sets.compositional.items())
        )
        atomic_write_text(folder / "table.txt", header + "\n" + table + "\n")
        slim = {
            n: {k: {m: v for m, v in r.items() if m not in ("confusion", "predictions")} for k, r in res.items()}
            for n, res in results.items()
        }
        atomic_write_json(folder / "results.json", {"sets": header, "results": slim})
        save_comparison_chart(results, folder / "results.png", metrics=metrics, title=f"clapkit demo — {header}")
        self.log(header)
        self.log(table)
        for name, res in results.items():
            failing = sorted(c for c, acc in res["zeroshot"]["per_class"].items() if acc == 0)
            self.log(f"{name}: zero-shot classes with no held-out clip right ({len(failing)}): {', '.join(failing)}")
        return results

    def check_stored_features(self, model: ClapModel, count: int = 4) -> float:
        """Largest difference between ``embed_audio`` / ``embed_text`` and the stored-feature path on a few inputs."""
        audio, text = self.stores()
        sets = self.eval_sets()
        files = sets.zeroshot.paths[:count] + sets.retrieval.audio[:count]
        captions = sets.retrieval.captions[:count]
        a = abs(model.embed_audio(files, batch_size=count) - embed_audio_features(model, audio, files)).max()
        t = abs(model.embed_text(captions) - embed_text_features(model, text, captions)).max()
        return float(max(a, t))

    # -------------------------------------------------------------- 8. search
    def search(self, model: ClapModel, source: str) -> dict[str, Any]:
        """An index over the held-out clips (embedded by the model itself), queried by text and by audio."""
        cfg = self.config.search
        test = self.records("test")
        index = AudioIndex.for_model(model, source=source, index="flat")
        paths = [str(self.dataset_dir / r["audio"]) for r in test]
        entries = [
            {"labels": r["labels"], "captions": r["captions"][:1], "fields": {"class": r["class"]}} for r in test
        ]
        index.add_audio(paths, entries, progress=self.progress)
        index.save(self.out / "index")
        shown: dict[str, Any] = {}
        for query in cfg.text_queries:
            hits = index.search(text=query, k=cfg.k)[0]
            shown[query] = [(h.labels[0], round(h.score, 3), Path(h.path).name) for h in hits]
        if cfg.audio_query_class:
            clip = next((r for r in self.records("train") if r["class"] == cfg.audio_query_class), None)
            if clip is None:
                raise ValueError(f"search.audio_query_class={cfg.audio_query_class!r}: no training clip of that class")
            hits = index.search(audio=str(self.dataset_dir / clip["audio"]), k=cfg.k)[0]
            shown[f"<audio: {clip['audio']}>"] = [(h.labels[0], round(h.score, 3), Path(h.path).name) for h in hits]
        self.log(f"AudioIndex over {len(index)} held-out clips ({index.key}), model {source}:")
        for query, hits in shown.items():
            self.log(f"  {query}")
            for rank, (label, score, name) in enumerate(hits, 1):
                self.log(f"    {rank}. {score:.3f}  {label:<26} {name}")
        return shown

    # -------------------------------------------------------------- everything
    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        cpu = _cpu_seconds()
        torch.set_num_threads(self.config.threads)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / OUT_MARKER).touch()
        atomic_write_text(self.out / "config.yaml", yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        self.dataset()
        self.scenes()
        self.benchmark()
        self.shards()
        self.features()
        trained = self.train()
        lalm = run_lalm(self, trained) if self.config.lalm.enabled else None
        step_start, step_cpu = time.perf_counter(), _cpu_seconds()
        models = {name: clapkit.load(info["model"]).eval() for name, info in trained.items()}
        diff = self.check_stored_features(next(iter(models.values())))
        self.log(f"stored-feature path vs embed_audio / embed_text on the saved model: max |difference| = {diff:.2e}")
        if diff > 1e-3:
            raise RuntimeError(f"stored features disagree with the model's own embeddings (max diff {diff:.2e})")
        results = self.evaluate(models, extra=lalm)
        self.timings["evaluate"] = _since(step_start, step_cpu)
        step_start, step_cpu = time.perf_counter(), _cpu_seconds()
        search_arm = self.config.search.model if self.config.search.model in models else next(iter(models))
        shown = self.search(models[search_arm], trained[search_arm]["model"])
        self.timings["search"] = _since(step_start, step_cpu)
        self.timings["total"] = _since(start, cpu)
        atomic_write_json(self.out / "timings.json", self.timings)
        self.log(
            "timings (wall s / CPU s): "
            + ", ".join(
                f"{k} {v['wall_s']:.0f}/{v['cpu_s']:.0f}" + (" (reused)" if v.get("reused") else "")
                for k, v in self.timings.items()
            )
        )
        return {"results": results, "search": shown, "timings": self.timings}


def _optim_config(raw: dict[str, Any]) -> OptimConfig:
    groups = [g if isinstance(g, ParamGroup) else ParamGroup(**g) for g in raw.get("param_groups", [])]
    return OptimConfig(**{**raw, "param_groups": groups})


def _one_thread(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """Run ``fn`` with one torch thread: the composer's many small tensor ops only lose time to thread hand-offs."""

    def run() -> dict[str, Any]:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)

    return run


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (shard-writer processes)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def _since(wall: float, cpu: float) -> dict[str, float]:
    return {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(_cpu_seconds() - cpu, 1)}


def fresh_start(out_dir: Path) -> None:
    """Delete a previous demo output folder (only one the demo made: it holds ``OUT_MARKER``)."""
    if not out_dir.exists():
        return
    if not (out_dir / OUT_MARKER).is_file():
        raise ValueError(
            f"--fresh: {out_dir} exists but was not made by the demo (no {OUT_MARKER}); remove it yourself"
        )
    shutil.rmtree(out_dir)


def quiet_libraries(progress: bool = True) -> None:
    """Keep Lightning's start-up notices and known-harmless warnings out of the demo's output.

    Args:
        progress: ``False`` also switches transformers' loading bars off (the LLM's GGUF conversion included).
    """
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def main(args: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m train demo",
        description="Train clapkit-small on real audio (debian-sounds) with infonce and compa_hardneg, evaluate both "
        "on held-out clips, scenes and compositional benchmarks, and search an index of the held-out clips. "
        "Finished steps are reused on the next run.",
    )
    parser.add_argument("-c", "--config", default="configs/demo.yaml", help="demo config (default: %(default)s)")
    parser.add_argument("--fresh", action="store_true", help="delete the previous output folder and rebuild it all")
    parser.add_argument("--out", help="output folder (default: the config's out_dir)")
    parser.add_argument("--threads", type=int, help="torch threads (default: the config's threads)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    opts = parser.parse_args(args)
    config = DemoConfig.load(opts.config)
    if opts.out:
        config.out_dir = opts.out
    if opts.threads:
        config.threads = opts.threads
    if opts.fresh:
        fresh_start(Path(config.out_dir))
    quiet_libraries(progress=not opts.quiet)
    started = time.strftime("%Y-%m-%d %H:%M")
    print(f"clapkit demo — {started} — config {opts.config} → {config.out_dir}", flush=True)
    return Demo(config, progress=not opts.quiet, log=lambda line: print(line, flush=True)).run()


if __name__ == "__main__":
    main(sys.argv[1:])
