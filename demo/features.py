"""Steps 4 and 5: the training shards, and the frozen towers' outputs stored once.

**shards** — training scenes (and the training clips) written as WebDataset shards. **features** — the frozen
towers run once: aisfx frames of every training window (read back from the shards), counterfactual, benchmark and
held-out clip; MiniLM tokens of every caption. Training and evaluation then run only the heads and projections.

With ``features.clip_views: N > 1`` each training clip (not the scenes, never the held-out clips) is stored N times:
view 0 clean, views 1..N-1 through ``clapkit.augment`` (``features.augment``), each seeded by (seed, view, key).
Training then draws one of a clip's views per visit, so the heads see augmented audio without the towers running
per step.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clapkit.augment import AugmentConfig, Augmenter, mix_seed
from clapkit.cache import FeatureStore, audio_features, file_windows, text_features
from clapkit.config import get_model_config
from clapkit.data.inputs import read_jsonl
from clapkit.data.reader import ReaderConfig, ShardReader
from clapkit.data.schema import load_manifest
from clapkit.data.writer import WriterConfig, parse_size, write_shards
from clapkit.io import atomic_write_text
from clapkit.steps import StepRunner, fingerprint
from demo.data import Workspace
from demo.tower import make_tower

__all__ = ["TrainSample", "make_features", "make_shards", "tower_settings", "train_samples", "view_key"]


@dataclass
class TrainSample:
    """One training sample on stored features.

    Attributes:
        key: Audio feature key of the clip.
        captions: Its captions: the composed caption first, then paraphrases (or a clip's other captions).
        negatives: Hard-negative captions.
        counterfactual: Audio feature key of the counterfactual scene, if any.
        views: Audio feature keys of the clip's augmented views (``features.clip_views``); training draws among
            ``key`` and these.
    """

    key: str
    captions: list[str]
    negatives: list[str] = field(default_factory=list)
    counterfactual: str | None = None
    views: list[str] = field(default_factory=list)


def train_samples(work: Workspace) -> list[TrainSample]:
    """The training samples the features step listed (``features/train_samples.jsonl``)."""
    path = work.out / "features" / "train_samples.jsonl"
    return [TrainSample(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def make_shards(work: Workspace, runner: StepRunner) -> dict[str, Any]:
    """Step 4: ``scenes/train_listing.jsonl`` written as shards at the model's sample rate."""
    cfg = work.config.shards
    folder = work.out / "shards"
    listing = work.out / "scenes" / "train_listing.jsonl"
    fp = fingerprint(runner.fingerprints["scenes"], cfg, work.sample_rate)

    def make() -> dict[str, Any]:
        # Each counterfactual is a training sample of its own here (its audio is that sample's audio), so the
        # shards need not carry it a second time as a `counterfactual.flac` member.
        config = WriterConfig(
            shard_size=parse_size(cfg.shard_size),
            sample_rate=work.sample_rate,
            bits=cfg.bits,
            workers=cfg.workers,
            counterfactual_audio=False,
        )
        manifest = write_shards(read_jsonl(listing), folder, config, source=str(listing), progress=work.progress)
        return {"samples": manifest.total, "shards": len(manifest.shards), "skipped": manifest.skipped}

    s = runner.step("shards", fp, folder, make)
    if s["skipped"] or not s["samples"]:
        # Every input is the demo's own: a skipped one is a defect, not bad data to step over.
        raise RuntimeError(
            f"shards: {s['skipped']} of {s['samples'] + s['skipped']} training samples skipped; "
            f"see {folder / 'report.json'}"
        )
    runner.log(f"        {s['samples']} samples in {s['shards']} shard(s), {s['skipped']} skipped")
    return s


def view_key(key: str, view: int) -> str:
    """Feature key of a training clip's augmented view ``view`` (≥ 1; view 0 is ``key`` itself)."""
    return f"{key}#view{view}"


class _ShardWindows:
    """The training windows read back from the shards as the training reader sees them (centre crop / pad),
    collecting each sample's captions and its scene / counterfactual role on the way; after each batch, the
    augmented views of its training clips (``features.clip_views``)."""

    def __init__(self, work: Workspace) -> None:
        cfg = work.config.features
        if cfg.clip_views < 1:
            raise ValueError(f"features.clip_views={cfg.clip_views}: expected ≥ 1 (1: the clean clip only)")
        self.views = cfg.clip_views
        self.augmenter = Augmenter(AugmentConfig.from_mapping(cfg.augment, "features.augment"))
        self.seed = work.config.seed
        self.audio_cfg = work.model().config.audio
        self.reader = ShardReader(
            work.out / "shards",
            ReaderConfig.for_audio(
                self.audio_cfg,
                batch_size=work.config.features.batch_size,
                train=False,
                other_captions_as_positives=True,
            ),
        )
        self.samples: list[TrainSample] = []
        self.by_role: dict[tuple[str, str], str] = {}  # (scene, role) → feature key, to pair scene and counterfactual

    def __iter__(self) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor]]:
        clip = self.audio_cfg.clip_samples
        for batch in self.reader.loader(num_workers=0):
            keys = [f"train/{k}" for k in batch["keys"]]
            for key, caption, positives, negatives, extra in zip(
                keys, batch["captions"], batch["positives"], batch["negatives"], batch["extra"]
            ):
                if "scene" in extra:
                    self.by_role[extra["scene"], extra["role"]] = key
                captions = list(dict.fromkeys([caption, *positives]))
                self.samples.append(TrainSample(key, captions, list(negatives), extra.get("counterfactual_audio")))
            # Zero padding is masked out, repeat padding is content (as ClapModel.embed_audio).
            lengths = batch["lengths"] if self.audio_cfg.pad == "zero" else torch.full_like(batch["lengths"], clip)
            yield keys, batch["audio"], lengths
            clips = [i for i, extra in enumerate(batch["extra"]) if "scene" not in extra]
            if clips and self.views > 1:
                yield from self._views(self.samples[-len(keys) :], clips, batch["audio"], lengths)

    def _views(
        self, samples: list[TrainSample], rows: list[int], audio: torch.Tensor, lengths: torch.Tensor
    ) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor]]:
        """Views 1..N-1 of the training clips in ``rows`` of a batch [B, T], one batch per view."""
        for view in range(1, self.views):
            keys = [view_key(samples[i].key, view) for i in rows]
            waves = self._augment([audio[i] for i in rows], [mix_seed(self.seed, view, samples[i].key) for i in rows])
            for i, key in zip(rows, keys):
                samples[i].views.append(key)
            yield keys, waves, lengths[rows]

    def _augment(self, waves: list[torch.Tensor], seeds: list[int]) -> torch.Tensor:
        """Each wave [T] augmented with its seed → [B, T], on one thread (the tower keeps its threads)."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the chain's many small ops lose time to thread hand-offs (~6x on 2 busy cores)
        try:
            rate = self.audio_cfg.sample_rate
            return torch.stack([self.augmenter(w, rate, seed=seed) for w, seed in zip(waves, seeds)])
        finally:
            torch.set_num_threads(threads)

    def counterfactual_files(self) -> dict[str, str]:
        """Point each sample's ``counterfactual`` at a feature key: its partner in the shards, or else a ``cf/``
        key of its counterfactual file; the ``cf/`` keys → files, to be embedded."""
        partner = {
            key: self.by_role.get((scene, "counterfactual" if role == "scene" else "scene"))
            for (scene, role), key in self.by_role.items()
        }
        counterfactuals: dict[str, str] = {}  # feature key → counterfactual file that is not a shard sample
        for sample in self.samples:
            if sample.counterfactual is not None:
                path = sample.counterfactual
                sample.counterfactual = partner.get(sample.key) or f"cf/{sample.key.split('/', 1)[1]}"
                if sample.counterfactual.startswith("cf/"):
                    counterfactuals[sample.counterfactual] = path
        return counterfactuals


def _store_features(work: Workspace, folder: Path) -> dict[str, Any]:
    """Run the frozen towers over every window and caption once; the stores and ``train_samples.jsonl``."""
    cfg = work.config.features
    model = work.model()
    audio_cfg = model.config.audio
    options = {"channels_last": cfg.channels_last, "progress": work.progress}
    windows = _ShardWindows(work)
    total = load_manifest(work.out / "shards").total  # clean windows; the bar counts the views on top
    stores: dict[str, FeatureStore] = {"train": audio_features(model, windows, total=total, **options)}
    counterfactuals = windows.counterfactual_files()
    cf_keys = list(counterfactuals)
    stores["counterfactual"] = audio_features(
        model,
        file_windows([counterfactuals[k] for k in cf_keys], audio_cfg, keys=cf_keys, batch_size=cfg.batch_size),
        total=len(cf_keys),
        **options,
    )
    sets = work.eval_sets()
    eval_keys = sets.audio_keys()
    stores["eval"] = audio_features(
        model, file_windows(eval_keys, audio_cfg, batch_size=cfg.batch_size), total=len(eval_keys), **options
    )
    for name, store in stores.items():
        store.save(folder / f"audio_{name}.safetensors")
    samples = windows.samples
    texts = [t for s in samples for t in (*s.captions, *s.negatives)] + sets.texts()
    text = text_features(model, texts, batch_size=cfg.text_batch_size, progress=work.progress)
    text.save(folder / "text.safetensors")
    atomic_write_text(
        folder / "train_samples.jsonl", "".join(json.dumps(dataclasses.asdict(s)) + "\n" for s in samples)
    )
    return {
        "train_windows": len(stores["train"]),
        "clip_views": sum(len(s.views) for s in samples),
        "counterfactual_windows": len(stores["counterfactual"]),
        "eval_windows": len(stores["eval"]),
        "texts": len(text),
    }


def tower_settings(work: Workspace) -> dict[str, Any]:
    """What the stored features depend on: the resolved frozen towers and audio front end, not the heads.

    The heads' and projections' settings (``model.overrides`` of ``audio_head`` and the like) change only training,
    so changing them reuses the stored features; towers without pretrained weights depend on the seed too.
    """
    m = work.config.model
    resolved = get_model_config(m.name, **m.overrides)
    settings = {"name": m.name, "pretrained": m.pretrained}
    for part in ("audio_tower", "text_tower", "audio", "frontend"):
        settings[part] = getattr(resolved, part)
    if not m.pretrained:
        settings["seed"] = work.config.seed
    return settings


def make_features(work: Workspace, runner: StepRunner) -> dict[str, Any]:
    """Step 5: the frozen towers' outputs of every training, counterfactual and held-out window and every text
    (after step 5a, ``demo.tower``, when the audio tower is adapted first)."""
    adapted = make_tower(work, runner)
    folder = work.out / "features"
    inputs = [runner.fingerprints["shards"], runner.fingerprints["benchmark"], tower_settings(work)]
    if adapted is not None:
        inputs.append(runner.fingerprints["tower"])
    fp = fingerprint(*inputs, work.config.features)
    s = runner.step("features", fp, folder, lambda: _store_features(work, folder))
    runner.log(
        f"        audio windows: {s['train_windows']} training ({s.get('clip_views', 0)} augmented clip views), "
        f"{s['counterfactual_windows']} counterfactual, "
        f"{s['eval_windows']} held-out; {s['texts']} distinct texts"
    )
    return s
