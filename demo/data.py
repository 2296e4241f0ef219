"""What the demo's steps share: the config, the output folder, the dataset's records, the frozen towers, the
held-out sets and the stored features; and step 1, **data** (``demo.datasets`` builds ``debian-sounds``)."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch

import clapkit
from clapkit.cache import FeatureStore
from clapkit.checkpoint import load_state, read_safetensors
from clapkit.compose.benchmark import BENCHMARK_KINDS, hold_out_pairs
from clapkit.compose.scenes import ComposerConfig, EventClip, EventPhrase
from clapkit.config import from_mapping
from clapkit.evaluate.compositional import load_compa_csv
from clapkit.evaluate.retrieval import load_retrieval_set
from clapkit.evaluate.suite import EvalSets
from clapkit.evaluate.zeroshot import LabelledAudio
from clapkit.model import ClapModel
from clapkit.steps import StepRunner, fingerprint
from demo.config import DemoConfig
from demo.datasets import CLASS_MAPS, DATASETS, class_map_fingerprint

__all__ = ["Workspace", "build_dataset"]


class Workspace:
    """The demo's config and output folder, and read access to what its steps wrote there.

    Args:
        config: The demo config.
        progress: Progress bars.
    """

    def __init__(self, config: DemoConfig, *, progress: bool = True) -> None:
        self.config = config
        self.progress = progress
        # Absolute: listings the demo writes name files by path, and a listing's relative paths are read as
        # relative to its own folder.
        self.out = Path(config.out_dir).resolve()
        self._given_dataset = Path(config.data.dataset_dir).resolve() if config.data.dataset_dir else None
        self._model: ClapModel | None = None
        self._stores: tuple[FeatureStore, FeatureStore] | None = None
        self._tower_weights: Path | None = None

    @property
    def tower_weights(self) -> Path | None:
        """The adapted audio tower's weights (the tower step's ``audio_tower.safetensors``), ``None`` when the
        pretrained tower is used as it is."""
        return self._tower_weights

    def use_tower_weights(self, path: Path | None) -> None:
        """Build :meth:`model` with the audio tower's weights from ``path`` (``None``: the pretrained ones)."""
        if path != self._tower_weights:
            self._tower_weights = path
            self._model = None
            self._stores = None

    @property
    def dataset_dir(self) -> Path:
        return self._given_dataset or self.out / "data" / self.config.data.dataset

    @property
    def sample_rate(self) -> int:
        m = self.config.model
        return clapkit.get_model_config(m.name, **m.overrides).audio.sample_rate

    def model(self) -> ClapModel:
        """The untrained architecture with its frozen towers (for the feature step): the pretrained ones, the audio
        tower adapted when the tower step ran (:meth:`use_tower_weights`)."""
        if self._model is None:
            m = self.config.model
            torch.manual_seed(self.config.seed)  # towers without pretrained weights start from the same draw
            model = clapkit.create_model(m.name, pretrained=m.pretrained, **m.overrides).eval()
            if self._tower_weights is not None:
                path = self._tower_weights
                load_state(model.audio_tower, read_safetensors(path), f"adapted audio tower {path}")
            self._model = model
        return self._model

    def records(self, split: str) -> list[dict[str, Any]]:
        """The dataset's records of ``split``: ``train``, ``test`` (in-source) or ``cross`` (cross-source; none
        when the folder has no ``cross.jsonl``, as one built before that split existed)."""
        path = self.dataset_dir / f"{split}.jsonl"
        if split == "cross" and not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

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
        raw = {**self.config.scenes.composer, "sample_rate": self.sample_rate}
        return from_mapping(ComposerConfig, raw, "scenes.composer")  # unknown keys named with the valid ones

    def held_out_pairs(self) -> list[tuple[str, str]]:
        labels = {r["class"] for r in self.records("test")} & {r["class"] for r in self.records("train")}
        return hold_out_pairs(labels, self.config.scenes.held_out_pair_fraction, seed=self.config.seed)

    def eval_sets(self) -> EvalSets:
        """The held-out sets: zero-shot on the in-source test clips and on the cross-source clips (both against
        the test split's classes), retrieval and compositional from the benchmark step."""
        folder = self.out / "benchmark"
        test = self.records("test")
        classes = sorted({r["labels"][0] for r in test})
        cross = self.records("cross")
        unknown = sorted({r["class"] for r in cross if r["labels"][0] not in classes})
        if unknown:
            raise ValueError(f"{self.dataset_dir}/cross.jsonl: classes {unknown} have no test clip to compare with")
        compositional = {
            name: load_compa_csv(folder / f"{name}.csv")
            for name in BENCHMARK_KINDS
            if (folder / f"{name}.csv").is_file()
        }
        return EvalSets(
            self._labelled(test, classes),
            load_retrieval_set(folder / "retrieval.jsonl"),
            compositional,
            zeroshot_cross_source=self._labelled(cross, classes) if cross else None,
        )

    def _labelled(self, records: list[dict[str, Any]], classes: list[str]) -> LabelledAudio:
        index = {c: i for i, c in enumerate(classes)}
        return LabelledAudio(
            paths=[str(self.dataset_dir / r["audio"]) for r in records],
            targets=torch.tensor([index[r["labels"][0]] for r in records]).numpy(),
            classes=classes,
        )

    def stores(self) -> tuple[FeatureStore, FeatureStore]:
        """(audio, text) feature stores of the features step."""
        if self._stores is None:
            folder = self.out / "features"
            audio = FeatureStore.load(folder / "audio_train.safetensors")
            for name in ("counterfactual", "eval"):
                audio = audio.merge(FeatureStore.load(folder / f"audio_{name}.safetensors"))
            self._stores = (audio, FeatureStore.load(folder / "text.safetensors"))
        return self._stores


def build_dataset(work: Workspace, runner: StepRunner) -> Path:
    """Step 1: build the configured dataset (or check a given one); its folder."""
    cfg = work.config.data
    if cfg.dataset_dir:
        folder = work.dataset_dir
        for split in ("train", "test"):
            if not (folder / f"{split}.jsonl").is_file():
                raise ValueError(f"data.dataset_dir: {folder} has no {split}.jsonl; build a dataset into it first")
        # The listings' contents: a folder whose splits changed is new data to the later steps.
        listings = hashlib.sha256()
        for split in ("train", "test", "cross"):
            path = folder / f"{split}.jsonl"
            listings.update(path.read_bytes() if path.is_file() else b"-")
        runner.record("data", fingerprint(str(folder.resolve()), listings.hexdigest()))
        runner.log(f"[data] using {folder}")
        return folder
    folder = work.out / "data" / cfg.dataset

    def build() -> dict[str, Any]:
        result = DATASETS.get(cfg.dataset)(folder, progress=work.progress)
        counts = result.counts()
        return {
            "classes": len(counts),
            **{split: sum(c[split] for c in counts.values()) for split in ("train", "test", "cross")},
            "cross_classes": sum(1 for c in counts.values() if c["cross"]),
        }

    # The class map and the builder's split rules decide the clips and splits: a change to either rebuilds.
    inputs = class_map_fingerprint(CLASS_MAPS.get(cfg.dataset)) if cfg.dataset in CLASS_MAPS else None
    summary = runner.step("data", fingerprint(cfg.dataset, inputs), folder, build)
    runner.log(
        f"        {summary['classes']} classes, {summary['train']} train / {summary['test']} test (in-source) / "
        f"{summary['cross']} cross-source clips ({summary['cross_classes']} classes with a held-out package)"
    )
    return folder
