"""Held-out compositional data: class pairs kept out of training, training scenes without them, and a benchmark.

A benchmark of compositional reasoning says something only about what training did not show. Three things are
kept apart here:

- **clips**: training scenes are composed from training clips, the benchmark from test clips (the caller's split);
- **class pairs**: ``hold_out_pairs`` picks pairs of classes that no training scene may combine;
  ``write_scenes`` drops composed scenes that would (and counts them), and the benchmark combines only those pairs;
- **phrasings**: training scenes use the composer's ``"train"`` template pool, the benchmark its ``"test"`` pool,
  whose connectives ("precedes", "after which", "whilst", …) training never used.

``write_compositional_benchmark`` writes CompA-order (``A then B`` vs ``B then A``) and CompA-attribute (``A loud,
then B soft`` or ``A fast, then B slow`` vs the attributes swapped) CSV files, each row a scene and its counterfactual
from the scene composer — built exactly as the training scenes are, so the contrasts are audible — plus a retrieval
listing of every benchmark scene with its caption.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from clapkit.audio import load_audio
from clapkit.compose.captions import hard_negatives, paraphrases
from clapkit.compose.lexicon import Lexicon
from clapkit.compose.scenes import ComposerConfig, EventClip, Scene, SceneComposer
from clapkit.compose.waveform import to_flac
from clapkit.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from clapkit.progress import progress_bar

__all__ = [
    "BENCHMARK_KINDS",
    "COMPA_COLUMNS",
    "hold_out_pairs",
    "preload_clips",
    "scene_pairs",
    "write_compositional_benchmark",
    "write_scenes",
]

#: CompA-order / CompA-attribute CSV header (``clapkit.evaluate.load_compa_csv`` reads it; no triplets here).
COMPA_COLUMNS = (
    "pair_caption",
    "reversed_pair_caption",
    "triplet_caption",
    "pair_file",
    "reversed_pair_file",
    "triplet_file",
)
#: Benchmark file → the scene kinds whose counterfactuals make its second pair (row i uses kind i mod the count).
BENCHMARK_KINDS: dict[str, tuple[str, ...]] = {"compa_order": ("sequence",), "compa_attribute": ("attribute", "rate")}

Pair = tuple[str, str]


def scene_pairs(labels: Iterable[str]) -> set[Pair]:
    """Every unordered pair of distinct labels in a scene, each as a sorted tuple."""
    return {tuple(sorted(p)) for p in itertools.combinations(set(labels), 2)}  # type: ignore[misc]


def hold_out_pairs(labels: Iterable[str], fraction: float, *, seed: int = 0) -> list[Pair]:
    """A seeded random ``fraction`` of all unordered class pairs (sorted tuples, sorted list).

    Raises:
        ValueError: fewer than 3 labels, or a fraction outside (0, 1).
    """
    labels = sorted(set(labels))
    if len(labels) < 3:
        raise ValueError(f"hold_out_pairs: {len(labels)} labels; need at least 3 so that training keeps some pairs")
    if not 0 < fraction < 1:
        raise ValueError(f"hold_out_pairs: fraction={fraction}; expected a value between 0 and 1")
    pairs = list(itertools.combinations(labels, 2))
    count = max(1, round(fraction * len(pairs)))
    chosen = np.random.default_rng(seed).choice(len(pairs), size=count, replace=False)
    return sorted(pairs[int(i)] for i in chosen)


def preload_clips(clips: Sequence[EventClip], sample_rate: int) -> list[EventClip]:
    """Decode each distinct audio source once; clips that share a source share the array.

    Undecodable sources are passed on unchanged (the composer skips and lists them).
    """
    decoded: dict[str, Any] = {}
    out = []
    for clip in clips:
        if isinstance(clip.audio, (str, Path)):
            key = str(clip.audio)
            if key not in decoded:
                try:
                    decoded[key] = load_audio(clip.audio, sample_rate, name=key).numpy()
                except ValueError:
                    decoded[key] = None
            if decoded[key] is not None:
                clip = replace(clip, audio=decoded[key], sample_rate=sample_rate, source=clip.source or key)
        out.append(clip)
    return out


def _write_pair(directory: Path, stem: str, scene: Scene) -> tuple[str, str]:
    """Scene audio and its counterfactual as FLAC; returns their names relative to ``directory``."""
    names = (f"{stem}.flac", f"{stem}.counterfactual.flac")
    for name, wave in zip(names, (scene.audio, scene.counterfactual_audio)):
        atomic_write_bytes(directory / name, to_flac(wave, scene.sample_rate))
    return names


def write_scenes(
    composer: SceneComposer,
    directory: str | Path,
    n: int,
    *,
    seed: int = 0,
    avoid_pairs: Iterable[Pair] = (),
    max_tries: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``n`` scenes that combine none of ``avoid_pairs`` (as ``SceneComposer.write`` otherwise).

    Scene i of the listing is ``composer.compose((seed, j))`` for the j-th draw that was kept, and keeps that seed.
    Files: ``scene_<seed>_<j>.flac`` + ``.counterfactual.flac`` and ``scenes.jsonl`` — the JSONL input of
    ``clapkit shards write``, with ``counterfactual_audio`` relative to the listing.

    Args:
        composer: Built over the training clips (pool ``"train"``).
        n: Scenes to keep.
        avoid_pairs: Unordered class pairs no scene may combine.
        max_tries: Draws before giving up (default ``20 × n``).

    Returns:
        ``{"listing", "scenes", "drawn", "rejected", "captions"}`` — counts of scenes kept, composed, dropped for
        combining a held-out pair, and distinct captions (caption + positives).

    Raises:
        ValueError: fewer than ``n`` scenes found in ``max_tries`` draws (too many pairs held out).
    """
    directory = Path(directory)
    avoid = {tuple(sorted(p)) for p in avoid_pairs}
    max_tries = max_tries or 20 * n
    lines, captions = [], set()
    drawn = 0
    bar = progress_bar(total=n, desc="compose scenes", unit="scene", disable=not progress)
    try:
        while len(lines) < n:
            if drawn >= max_tries:
                raise ValueError(
                    f"write_scenes: only {len(lines)} of {n} scenes in {max_tries} draws avoid the held-out pairs; "
                    "hold out fewer pairs or raise max_tries"
                )
            scene = composer.compose((seed, drawn))
            drawn += 1
            if scene_pairs(e["label"] for e in scene.events) & avoid:
                continue
            audio, counter = _write_pair(directory, f"scene_{seed}_{drawn - 1:07d}", scene)
            lines.append(json.dumps({"audio": audio, **scene.metadata(), "counterfactual_audio": counter}))
            captions.update([scene.caption, *scene.positives])
            bar.update(1)
    finally:
        bar.close()
    listing = atomic_write_text(directory / "scenes.jsonl", "\n".join(lines) + "\n")
    return {
        "listing": listing,
        "scenes": len(lines),
        "drawn": drawn,
        "rejected": drawn - len(lines),
        "captions": len(captions),
    }


def training_records(
    scenes: Sequence[dict[str, Any]],
    root: str | Path,
    *,
    counterfactuals: bool = True,
    lexicon: Lexicon | None = None,
    num_positives: int = 3,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Shard-writer records of a ``scenes.jsonl`` listing, with each counterfactual as a training sample too.

    A scene's counterfactual (the same clips reversed, in sequence, or with swapped attributes) is itself a valid
    scene described by ``counterfactual_caption``. Training on the scenes alone lets a model separate "audio it has
    seen as a positive" from "audio it has only seen as a negative" — memorising the scenes instead of learning
    their composition, and a held-out benchmark, whose pairs are both unseen, exposes it. With ``counterfactuals``
    both orderings are samples: the counterfactual record has the counterfactual caption, rule-based paraphrases
    (``paraphrases``) as positives, the scene's caption first among its negatives (then ``hard_negatives`` of its
    caption), and the scene's audio as its ``counterfactual_audio``.

    Every record gets ``scene`` (the scene's file stem) and ``role`` (``"scene"`` | ``"counterfactual"``); audio
    paths are made absolute against ``root`` (the listing's folder).

    Args:
        scenes: Lines of ``scenes.jsonl`` (``write_scenes`` / ``SceneComposer.write``).
        root: Folder the listing's paths are relative to.
        counterfactuals: Add the counterfactual records.
        lexicon: Synonyms for the paraphrases and antonyms for the negatives (the composer's ``lexicon``, which
            leaves out synonyms that would change a connective).
        num_positives: Paraphrases kept per counterfactual record.
    """
    root = Path(root)
    out = []
    for i, scene in enumerate(scenes):
        audio, counter = (str(root / scene[k]) for k in ("audio", "counterfactual_audio"))
        name = Path(scene["audio"]).stem
        out.append({**scene, "audio": audio, "counterfactual_audio": counter, "scene": name, "role": "scene"})
        if not counterfactuals:
            continue
        caption = scene["counterfactual_caption"]
        positives = paraphrases(caption, seed=seed + i, max_paraphrases=num_positives, lexicon=lexicon)
        found = hard_negatives(caption, seed=seed + i, lexicon=lexicon)
        negatives = [n for n in dict.fromkeys([scene["captions"][0], *found]) if n != caption and n not in positives]
        out.append(
            {
                "audio": counter,
                "captions": [caption],
                "positives": positives,
                "negatives": negatives,
                "labels": scene["labels"],
                "kind": scene["kind"],
                "counterfactual_audio": audio,
                "counterfactual_caption": scene["captions"][0],
                "scene": name,
                "role": "counterfactual",
            }
        )
    return out


def write_compositional_benchmark(
    clips: Sequence[EventClip],
    directory: str | Path,
    pairs: Sequence[Pair],
    *,
    counts: dict[str, int],
    config: ComposerConfig | None = None,
    seed: int = 0,
    pool: str = "test",
    progress: bool = True,
) -> dict[str, Any]:
    """CompA-order and CompA-attribute CSV files over ``pairs``, composed from ``clips`` with held-out phrasings.

    Row i of a benchmark combines ``pairs[perm[i mod P]]`` (a seeded permutation, so every pair is used before any
    is used twice): the scene (``pair_*``) and its counterfactual (``reversed_pair_*``) — the same two clips in
    the other order (``compa_order``) or with the attributes swapped (``compa_attribute``: even rows loud/soft,
    odd rows fast/slow; ``items.jsonl`` gives each row's kind).

    Writes ``<name>.csv`` per benchmark, ``audio/<name>_<i>.flac`` (+ ``.counterfactual.flac``),
    ``retrieval.jsonl`` (every benchmark clip with its caption: ``{"path", "captions"}``, for
    ``clapkit.evaluate.load_retrieval_set``), ``items.jsonl`` (per row: benchmark, classes, kind, seed, captions,
    events) and ``summary.json``.

    Args:
        clips: Test clips (``preload_clips`` first to decode each once).
        pairs: Unordered class pairs to combine; each must have clips of both classes.
        counts: Rows per benchmark, e.g. ``{"compa_order": 500, "compa_attribute": 300}`` (names of
            ``BENCHMARK_KINDS``).
        config: Composer settings (the sample rate of the model).
        pool: Template pool of the captions (``"test"``: phrasings the ``"train"`` pool never uses).
    """
    directory = Path(directory)
    by_label = _clips_by_label(clips, pairs, counts)
    # Only the benchmark kinds are composed; other kind weights of the caller's config do not matter here.
    # Held-out audio is never augmented, whatever the caller's config says.
    config = replace(
        config or ComposerConfig(),
        kinds={kind: 1.0 for name in counts for kind in BENCHMARK_KINDS[name]},
        augment=None,
    )
    composers: dict[Pair, SceneComposer] = {}

    def composer_for(pair: Pair) -> SceneComposer:
        if pair not in composers:
            members = by_label[pair[0]] + by_label[pair[1]]
            composers[pair] = SceneComposer(members, config=config, pool=pool)
        return composers[pair]

    rng = np.random.default_rng(seed)
    written: dict[str, Any] = {"pairs": len(pairs), "pool": pool}
    retrieval, items = [], []
    for bench_index, (name, rows) in enumerate(counts.items()):
        chosen = [tuple(pairs[int(k)]) for k in rng.permutation(len(pairs))]  # row i combines chosen[i mod P]
        table = [COMPA_COLUMNS]
        for i in progress_bar(range(rows), desc=name, unit="pair", disable=not progress):
            pair = chosen[i % len(pairs)]
            scene_seed = (seed, bench_index, i)
            kinds = BENCHMARK_KINDS[name]
            scene = composer_for(pair).compose(scene_seed, kind=kinds[i % len(kinds)])
            row, listed, item = _benchmark_row(directory, name, i, pair, scene_seed, scene)
            table.append(row)
            retrieval += listed
            items.append(item)
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(table)
        written[name] = str(atomic_write_text(directory / f"{name}.csv", buf.getvalue()))
        written[f"{name}_rows"] = rows
    written["retrieval"] = str(
        atomic_write_text(directory / "retrieval.jsonl", "".join(json.dumps(r) + "\n" for r in retrieval))
    )
    atomic_write_text(directory / "items.jsonl", "".join(json.dumps(r) + "\n" for r in items))
    skipped = sorted({s for c in composers.values() for s in c.skipped})
    written["skipped_clips"] = skipped
    atomic_write_json(directory / "summary.json", written)
    return written


def _clips_by_label(
    clips: Sequence[EventClip], pairs: Sequence[Pair], counts: dict[str, int]
) -> dict[str, list[EventClip]]:
    """The clips of each label, once ``counts`` is known to name benchmarks and every pair to have clips."""
    unknown = set(counts) - set(BENCHMARK_KINDS)
    if unknown:
        raise ValueError(f"counts: unknown benchmarks {sorted(unknown)}; valid: {', '.join(BENCHMARK_KINDS)}")
    if not pairs:
        raise ValueError("write_compositional_benchmark: no class pairs given")
    by_label: dict[str, list[EventClip]] = {}
    for clip in clips:
        by_label.setdefault(clip.label, []).append(clip)
    lacking = sorted({label for p in pairs for label in p if label not in by_label})
    if lacking:
        raise ValueError(f"pairs use labels without clips: {', '.join(lacking)}; drop those pairs")
    return by_label


def _benchmark_row(
    directory: Path, name: str, row: int, pair: Pair, scene_seed: tuple[int, int, int], scene: Scene
) -> tuple[tuple[str, ...], list[dict[str, Any]], dict[str, Any]]:
    """Write one benchmark row's scene and counterfactual under ``audio/``.

    Returns:
        The CSV row (``COMPA_COLUMNS``), its two ``retrieval.jsonl`` entries and its ``items.jsonl`` entry.
    """
    audio, counter = _write_pair(directory / "audio", f"{name}_{row:05d}", scene)
    audio, counter = f"audio/{audio}", f"audio/{counter}"
    listed = [
        {"path": audio, "captions": [scene.caption]},
        {"path": counter, "captions": [scene.counterfactual_caption]},
    ]
    item = {
        "benchmark": name,
        "row": row,
        "classes": list(pair),
        "kind": scene.kind,
        "seed": list(scene_seed),
        "captions": [scene.caption, scene.counterfactual_caption],
        "events": scene.events,
    }
    return (scene.caption, scene.counterfactual_caption, "-", audio, counter, "-"), listed, item
