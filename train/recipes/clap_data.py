"""The data stage of the contrastive recipes: training shards (captions, paraphrase positives, hard negatives,
counterfactual audio) and the held-out evaluation sets, from one of three sources (``data.source``):

- ``synthetic`` (``--scale tiny``): a few classes of synthesised sounds (tones, buzzes, sweeps, noise bursts,
  knocks, warbles) written as WAV files, split into training and test clips, then the same composition path as the
  demo: the scene composer over the training clips (held-out class pairs kept out), ``training_records`` with the
  counterfactuals, ``write_shards``; a CompA-order / CompA-attribute benchmark and its retrieval listing composed
  from the test clips over the held-out pairs; zero-shot on the test clips.
- ``demo`` (``--scale demo``): a finished demo run's folder (``runs/demo`` after ``make demo``): its training shards
  (debian-sounds clips and the composed scenes), its held-out benchmark, and zero-shot on its test and
  cross-source clips. The folder is only read; the fingerprints of the demo's steps are part of this stage's.
- ``shards`` (``--scale full``): shard folders and evaluation files you give.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import yaml

from clapkit.compose.benchmark import (
    BENCHMARK_KINDS,
    hold_out_pairs,
    preload_clips,
    training_records,
    write_compositional_benchmark,
    write_scenes,
)
from clapkit.compose.phrases import phrase_for
from clapkit.compose.scenes import ComposerConfig, EventClip, SceneComposer
from clapkit.config import from_mapping
from clapkit.data.inputs import read_jsonl
from clapkit.data.writer import WriterConfig, write_shards
from clapkit.evaluate.compositional import load_compa_csv
from clapkit.evaluate.retrieval import load_retrieval_set
from clapkit.evaluate.suite import EvalSets
from clapkit.evaluate.zeroshot import load_labelled_audio
from clapkit.io import atomic_write_text
from clapkit.steps import DONE
from train.recipes.base import RecipeContext

__all__ = [
    "SYNTHETIC_CLASSES",
    "clap_data",
    "demo_fingerprints",
    "demo_markers",
    "eval_sets",
    "read_records",
    "synthesize_clips",
]


def _tone(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.sin(2 * np.pi * rng.uniform(300, 600) * t)


def _buzz(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.sign(np.sin(2 * np.pi * rng.uniform(90, 150) * t)) * 0.6


def _sweep(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    f0, f1 = rng.uniform(300, 500), rng.uniform(2000, 3000)
    return np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1])))


def _hiss(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(t.size)
    return np.diff(noise, prepend=0.0) * 0.4  # differenced white noise: a bright hiss


def _knock(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    period = rng.uniform(0.12, 0.18)
    phase = np.mod(t, period)
    return np.sin(2 * np.pi * rng.uniform(80, 120) * phase) * np.exp(-phase * 40)


def _warble(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    f = rng.uniform(1200, 1600) + 300 * np.sin(2 * np.pi * rng.uniform(6, 9) * t)
    return np.sin(2 * np.pi * np.cumsum(f) / (t.size / t[-1]))


#: Class → generator of one clip (time axis, rng → waveform); six timbres a small model can tell apart.
SYNTHETIC_CLASSES = {"tone": _tone, "buzz": _buzz, "sweep": _sweep, "hiss": _hiss, "knock": _knock, "warble": _warble}


def synthesize_clips(folder: Path, per_class: int, sample_rate: int, seed: int) -> list[dict[str, Any]]:
    """``per_class`` WAV clips (0.3–0.6 s, faded) of each synthetic class in ``folder/<class>/``; their records."""
    rng = np.random.default_rng(seed)
    records = []
    for label, make in SYNTHETIC_CLASSES.items():
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            n = int(rng.uniform(0.3, 0.6) * sample_rate)
            t = np.arange(n) / sample_rate
            wave = make(t, rng) * np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms fades
            path = folder / label / f"{label}_{i:03d}.wav"
            sf.write(path, (0.5 * wave / max(1e-6, np.abs(wave).max())).astype(np.float32), sample_rate)
            records.append({"audio": str(path), "label": label})
    return records


def _synthetic(ctx: RecipeContext, cfg: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    sample_rate, seed = int(cfg["sample_rate"]), int(ctx.config.get("seed", 0))
    split = {
        "train": synthesize_clips(folder / "clips" / "train", int(cfg["train_per_class"]), sample_rate, seed),
        "test": synthesize_clips(folder / "clips" / "test", int(cfg["test_per_class"]), sample_rate, seed + 1),
    }
    clips = {
        name: preload_clips([EventClip(r["audio"], r["label"]) for r in recs], sample_rate)
        for name, recs in split.items()
    }
    composer_config = from_mapping(ComposerConfig, {**cfg.get("composer", {}), "sample_rate": sample_rate}, "composer")
    return _compose(
        ctx, cfg, folder, clips, composer_config, single_clips=split["train"], zeroshot=folder / "clips" / "test"
    )


def _compose(
    ctx: RecipeContext,
    cfg: Mapping[str, Any],
    folder: Path,
    clips: Mapping[str, list[EventClip]],
    composer_config: ComposerConfig,
    *,
    single_clips: list[dict[str, Any]],
    zeroshot: Path,
) -> dict[str, Any]:
    """Scenes over the training clips (held-out pairs kept out), their shards, and the held-out benchmark."""
    seed = int(ctx.config.get("seed", 0))
    labels = sorted({c.label for c in clips["train"]})
    held_out = hold_out_pairs(labels, float(cfg.get("held_out_pair_fraction", 0.2)), seed=seed)
    composer = SceneComposer(clips["train"], config=composer_config, pool="train")
    info = write_scenes(
        composer, folder / "scenes", int(cfg["scenes"]), seed=seed, avoid_pairs=held_out, progress=ctx.progress
    )
    scenes = [json.loads(line) for line in Path(info["listing"]).read_text().splitlines()]
    records = training_records(
        scenes, folder / "scenes", lexicon=composer.lexicon, num_positives=composer_config.num_positives, seed=seed
    )
    for rec in single_clips:  # single-event captions: what zero-shot classification rests on
        phrase = phrase_for(rec["label"])
        captions = [f"{phrase.subject} {phrase.verb}", f"the sound of {rec['label']}"]
        records.append({"audio": rec["audio"], "captions": captions, "labels": [rec["label"]], "kind": "clip"})
    listing = atomic_write_text(folder / "train_listing.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    writer = WriterConfig(sample_rate=composer_config.sample_rate, counterfactual_audio=True, max_count=64)
    manifest = write_shards(read_jsonl(listing), folder / "shards", writer, source=str(listing), progress=ctx.progress)
    counts = {name: int(cfg["benchmark"][name]) for name in BENCHMARK_KINDS if cfg["benchmark"].get(name)}
    write_compositional_benchmark(
        clips["test"], folder / "benchmark", held_out, counts=counts, config=composer_config, seed=seed,
        progress=ctx.progress,
    )  # fmt: skip
    return {
        "train_shards": str(folder / "shards"),
        "val_shards": None,
        "listing": str(listing),
        "clips": {name: str(folder / "clips" / name) for name in ("train", "test")},
        "samples": manifest.total,
        "skipped": manifest.skipped,
        "scenes": info["scenes"],
        "held_out_pairs": len(held_out),
        "eval": {
            "zeroshot": str(zeroshot),
            "retrieval": str(folder / "benchmark" / "retrieval.jsonl"),
            **{name: str(folder / "benchmark" / f"{name}.csv") for name in counts},
        },
    }


def _demo(ctx: RecipeContext, cfg: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """A finished demo run's shards and held-out sets (its folder is read, never written)."""
    run = Path(cfg.get("run_dir") or "runs/demo").resolve()
    markers = demo_markers(run)
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    given = (config.get("data") or {}).get("dataset_dir")
    dataset = Path(given).resolve() if given else run / "data" / config["data"]["dataset"]
    test = read_records(dataset / "test.jsonl")
    classes = sorted({r["labels"][0] for r in test})
    files = {"zeroshot": str(_labelled_csv(folder / "zeroshot.csv", dataset, test))}
    cross = [r for r in read_records(dataset / "cross.jsonl", missing_ok=True) if r["labels"][0] in classes]
    if cross:
        files["zeroshot_cross_source"] = str(_labelled_csv(folder / "zeroshot_cross_source.csv", dataset, cross))
    bench = run / "benchmark"
    files["retrieval"] = str(bench / "retrieval.jsonl")
    files.update({name: str(bench / f"{name}.csv") for name in BENCHMARK_KINDS if (bench / f"{name}.csv").is_file()})
    shards = markers["shards"]["result"]
    return {
        "train_shards": str(run / "shards"),
        "val_shards": None,
        "samples": shards["samples"],
        "skipped": shards["skipped"],
        "demo_run": str(run),
        "eval": files,
    }


def demo_markers(run: Path) -> dict[str, Any]:
    """The ``.done.json`` markers of a demo run's data steps; a clear error when a step has not finished."""
    markers = {}
    for step in ("shards", "benchmark"):
        path = run / step / DONE
        if not path.is_file():
            raise ValueError(
                f"{run}: the demo's {step} step has not finished there ({path} is missing); run `make demo` "
                "(or `python -m demo`) first, or set data.run_dir to a finished demo folder"
            )
        markers[step] = json.loads(path.read_text(encoding="utf-8"))
    return markers


def demo_fingerprints(cfg: Mapping[str, Any]) -> dict[str, str]:
    """The fingerprints of the demo run ``data.run_dir`` (default ``runs/demo``) names: a data stage built from it
    is part of its own fingerprint, so a rebuilt demo run is new data."""
    run = Path(cfg.get("run_dir") or "runs/demo").resolve()
    return {k: v["fingerprint"] for k, v in demo_markers(run).items()}


def read_records(path: Path, *, missing_ok: bool = False) -> list[dict[str, Any]]:
    if missing_ok and not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _labelled_csv(path: Path, dataset: Path, records: list[dict[str, Any]]) -> Path:
    """A ``path,label`` CSV of dataset records (``load_labelled_audio`` reads it back)."""
    rows = ["path,label"] + [f"{dataset / r['audio']},{r['labels'][0]}" for r in records]
    return atomic_write_text(path, "\n".join(rows) + "\n")


def _shards(ctx: RecipeContext, cfg: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """Given shard folders and evaluation files (relative paths: against the working directory)."""
    if not cfg.get("train_shards"):
        raise ValueError("data.train_shards: give the training shard folder (source: shards)")
    given = dict(cfg.get("eval") or {})
    missing = [f"data.eval.{k} = {v}" for k, v in given.items() if v and not Path(v).exists()]
    if missing:
        raise ValueError("evaluation files not found: " + "; ".join(missing))
    return {"train_shards": cfg["train_shards"], "val_shards": cfg.get("val_shards"), "eval": given}


SOURCES = {"synthetic": _synthetic, "demo": _demo, "shards": _shards}


def clap_data(ctx: RecipeContext) -> dict[str, Any]:
    """The data stage (``data`` in the run folder): shards and evaluation files, per ``config.data.source``."""
    cfg = ctx.config.get("data") or {}
    source = cfg.get("source")
    if source not in SOURCES:
        raise ValueError(f"data.source {source!r}: expected one of {', '.join(SOURCES)}")
    parts = {"data": cfg, "seed": ctx.config.get("seed")}
    if source == "demo":
        parts["demo"] = demo_fingerprints(cfg)
    return ctx.stage("data", parts, lambda folder: SOURCES[source](ctx, cfg, folder))


def eval_sets(files: Mapping[str, str]) -> EvalSets:
    """The held-out sets named in the data stage's ``eval`` (zero-shot, cross-source, retrieval, CompA files)."""
    sets = EvalSets()
    if files.get("zeroshot"):
        sets.zeroshot = load_labelled_audio(files["zeroshot"])
    if files.get("zeroshot_cross_source"):
        cross = load_labelled_audio(files["zeroshot_cross_source"])
        if sets.zeroshot is not None:  # the in-source classes are the prompts of both: one chance level
            index = {c: i for i, c in enumerate(sets.zeroshot.classes)}
            cross.targets = np.array([index[cross.classes[t]] for t in cross.targets])
            cross.classes = sets.zeroshot.classes
        sets.zeroshot_cross_source = cross
    if files.get("retrieval"):
        sets.retrieval = load_retrieval_set(files["retrieval"])
    for name in BENCHMARK_KINDS:
        if files.get(name):
            sets.compositional[name] = load_compa_csv(files[name])
    return sets
