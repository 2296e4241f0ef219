"""Steps 2 and 3: training scenes from the training clips, and the held-out compositional benchmark.

**scenes** — the scene composer makes training scenes from the *training* clips only, with the ``train`` template
pool, the paraphrase lexicon and several phrasings per class; scenes that would combine a held-out class pair are
dropped. **benchmark** — CompA-order and CompA-attribute CSV files composed from the *test* clips only, over the
held-out class pairs, with the ``test`` template pool (connectives training never used), and a retrieval listing
of those scenes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from clapkit.compose.benchmark import (
    BENCHMARK_KINDS,
    preload_clips,
    scene_pairs,
    training_records,
    write_compositional_benchmark,
    write_scenes,
)
from clapkit.compose.scenes import SceneComposer
from clapkit.io import atomic_write_text
from clapkit.steps import StepRunner, fingerprint
from demo.data import Workspace

__all__ = ["make_benchmark", "make_scenes"]


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


def _compose_scenes(work: Workspace, folder: Path) -> dict[str, Any]:
    """Compose, check and list the training scenes (and the training clips) in ``folder``."""
    cfg = work.config.scenes
    clips = preload_clips(work.event_clips("train"), work.sample_rate)
    composer = SceneComposer(clips, config=work.composer_config(), pool="train")
    held_out = work.held_out_pairs()
    info = write_scenes(
        composer, folder, cfg.count, seed=work.config.seed, avoid_pairs=held_out, progress=work.progress
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
        seed=work.config.seed,
    )
    lines = [json.dumps(r) for r in records]
    singles = 0
    if cfg.single_clips:
        for rec in work.records("train"):
            fields = {k: rec[k] for k in ("captions", "labels", "duration")}
            lines.append(json.dumps({"audio": str(work.dataset_dir / rec["audio"]), **fields, "kind": "clip"}))
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


def make_scenes(work: Workspace, runner: StepRunner) -> dict[str, Any]:
    """Step 2: the training scenes and ``scenes/train_listing.jsonl`` (the shards' input)."""
    cfg = work.config.scenes
    folder = work.out / "scenes"
    fp = fingerprint(runner.fingerprints["data"], cfg, work.config.phrases, work.sample_rate, work.config.seed)
    s = runner.step("scenes", fp, folder, _one_thread(lambda: _compose_scenes(work, folder)))
    runner.log(
        f"        {s['scenes']} scenes {s['kinds']} from training clips + {s['single_clips']} single clips; "
        f"{s['rejected']} of {s['drawn']} drawn scenes dropped for combining a held-out pair; "
        f"{s['distinct_captions']} distinct captions (caption + paraphrases); "
        f"{s['pairs_combined']} class pairs combined, {s['held_out_pairs']} held out"
    )
    return s


def make_benchmark(work: Workspace, runner: StepRunner) -> dict[str, Any]:
    """Step 3: the held-out CompA-order / CompA-attribute benchmark and its retrieval listing."""
    cfg = work.config.benchmark
    folder = work.out / "benchmark"
    counts = {name: getattr(cfg, name) for name in BENCHMARK_KINDS if getattr(cfg, name) > 0}
    fp = fingerprint(
        runner.fingerprints["data"],
        counts,
        work.config.phrases,
        work.config.scenes.held_out_pair_fraction,
        work.config.scenes.composer,
        work.sample_rate,
        work.config.seed,
    )

    @_one_thread
    def make() -> dict[str, Any]:
        clips = preload_clips(work.event_clips("test"), work.sample_rate)
        info = write_compositional_benchmark(
            clips,
            folder,
            work.held_out_pairs(),
            counts=counts,
            config=work.composer_config(),
            seed=work.config.seed,
            progress=work.progress,
        )
        return {**counts, "pairs": info["pairs"], "skipped_clips": len(info["skipped_clips"])}

    s = runner.step("benchmark", fp, folder, make)
    rows = ", ".join(f"{name} {s[name]} rows" for name in counts)
    runner.log(f"        {rows} from test clips over {s['pairs']} held-out class pairs, test template pool")
    return s
