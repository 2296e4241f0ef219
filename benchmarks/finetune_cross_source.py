"""Does training the audio tower lift accuracy across sources? A supervised fine-tuning diagnostic.

``probe_cross_source`` bounds what heads on the frozen aisfx features can reach on the demo's cross split. This
script asks what training the tower itself buys: it fine-tunes the last conv blocks of the aisfx CNN together with
a linear classifier on the demo's training clips (``clapkit.adapt.train_tower_classifier``, as the demo's tower
step does), with ``clapkit.augment`` views against package fingerprints (level, EQ, room, band limit, resampling,
noise, codec, and ``speed``: ±3 semitones with probability ``--speed-p``, 0.8 by default; 0 gives the chain of
the demo's stored views, which measured better across sources), on random crops of ``--seconds`` (most clips are 1-3 s;
short ones are repeat-padded as the model does). The classifier is scored top-1 on the in-source test and the
cross-source clips, overall and per source group (each SoundFont, recorded events and instruments, speech), next
to the same classifier on the frozen tower (``--blocks`` empty) when ``--baseline`` is given.

It needs the demo's dataset (run ``make demo`` first, or at least its data step) and writes
``<out_dir>/results/cross_source_finetune.json``. CPU cost on 2 cores: ~1-2 s per step of 32 crops of 3 s
(1.1 s with all four blocks trained, measured 2026-12-07).

    HF_HUB_OFFLINE=1 python -m benchmarks.finetune_cross_source [-c configs/demo.yaml] [--steps 400]
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from clapkit.adapt import TowerAdaptConfig, TowerClassifier, random_crop, train_tower_classifier
from clapkit.audio import load_audio
from clapkit.augment import AugmentConfig, Augmenter
from clapkit.factory import create_model
from clapkit.io import atomic_write_text
from demo.config import load_config
from demo.data import Workspace

BLOCKS = ("conv_block1", "conv_block2", "conv_block3", "conv_block4")


def source_group(record: dict[str, Any]) -> str:
    """Speech, a SoundFont's renders (by package) or recorded audio."""
    if record["kind"] == "speech":
        return "speech"
    return record["source_package"] if "soundfont" in record["source_package"] else "recorded"


def evaluate(model: TowerClassifier, waves: list[torch.Tensor], records: list[dict], samples: int):
    """Top-1 overall and per source group; the centre window of each clip."""
    model.eval()
    hits: dict[str, list[bool]] = defaultdict(list)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for start in range(0, len(waves), 32):
            batch = torch.stack([random_crop(w, samples, None) for w in waves[start : start + 32]])
            for pred, rec in zip(model(batch).argmax(1).tolist(), records[start : start + 32]):
                hit = model.classes[pred] == rec["class"]
                hits["all"].append(hit)
                hits[source_group(rec)].append(hit)
    return {group: {"clips": len(h), "top1": round(float(np.mean(h)), 4)} for group, h in sorted(hits.items())}


def run(args: argparse.Namespace, work: Workspace, train_blocks: list[int]) -> dict[str, Any]:
    rate = work.sample_rate
    splits = {s: work.records(s) for s in ("train", "test", "cross")}
    if not splits["cross"]:
        raise SystemExit(f"{work.dataset_dir}: no cross-source clips (cross.jsonl); build the dataset with make demo")
    waves = {
        s: [load_audio(work.dataset_dir / r["audio"], rate, name=r["audio"]) for r in rs] for s, rs in splits.items()
    }
    cfg = TowerAdaptConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        seconds=args.seconds,
        train=[f"net.{BLOCKS[b - 1]}." for b in train_blocks],
        lr=args.lr,
        tower_lr_ratio=args.tower_lr_ratio,
    )
    augment_cfg = AugmentConfig()
    augment_cfg.speed.p = args.speed_p
    torch.manual_seed(args.seed)
    tower = create_model(work.config.model.name).audio_tower
    model = train_tower_classifier(
        tower,
        waves["train"],
        [r["class"] for r in splits["train"]],
        rate,
        cfg,
        augmenter=Augmenter(augment_cfg) if args.augment else None,
        seed=args.seed,
        names=[r["audio"] for r in splits["train"]],
    )
    samples = round(args.seconds * rate)
    result = {
        "train_blocks": train_blocks,
        "train_seconds": model.stats["train_seconds"],
        "in_source": evaluate(model, waves["test"], splits["test"], samples),
        "cross_source": evaluate(model, waves["cross"], splits["cross"], samples),
    }
    print(
        f"blocks {train_blocks or 'none (frozen)'}: in-source {result['in_source']['all']['top1']:.3f}, "
        f"cross-source {result['cross_source']['all']['top1']:.3f} "
        + json.dumps({g: v["top1"] for g, v in result["cross_source"].items()}),
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.finetune_cross_source",
        description="Fine-tune the aisfx tower's last blocks with a linear classifier on the demo's training clips "
        "(augmented) and score it on the in-source and cross-source clips, per source group.",
    )
    parser.add_argument("-c", "--config", default="configs/demo.yaml", help="demo config (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=400, help="training steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="crops per step (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=3.0, help="crop length in s (default: %(default)s)")
    parser.add_argument(
        "--blocks", type=int, nargs="*", default=[3, 4], help="conv blocks (1-4) to train (default: 3 4)"
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="classifier peak rate (default: %(default)s)")
    parser.add_argument(
        "--tower-lr-ratio", type=float, default=0.1, help="tower rate / classifier rate (default: %(default)s)"
    )
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="train on the clean clips")
    parser.add_argument(
        "--speed-p",
        type=float,
        default=0.8,
        help="probability of the ±3-semitone speed change in each view; 0 for the chain of the demo's stored "
        "views (default: %(default)s)",
    )
    parser.add_argument("--baseline", action="store_true", help="also train the classifier on the frozen tower")
    parser.add_argument("--seed", type=int, default=0, help="seed of crops, batches and views (default: 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's)")
    args = parser.parse_args(argv)
    if args.steps < 1 or not all(1 <= b <= 4 for b in args.blocks):
        parser.error("--steps must be ≥ 1 and --blocks within 1-4")
    config = load_config(args.config)
    torch.set_num_threads(args.threads or config.threads)
    work = Workspace(config, progress=False)
    summary: dict[str, Any] = {"config": args.config, "steps": args.steps, "seconds": args.seconds}
    summary["augment"] = args.augment
    summary["speed_p"] = args.speed_p if args.augment else None
    if args.baseline:
        summary["frozen"] = run(args, work, [])
    summary["finetuned"] = run(args, work, sorted(set(args.blocks)))
    path = atomic_write_text(
        Path(config.out_dir) / "results" / "cross_source_finetune.json", json.dumps(summary, indent=2) + "\n"
    )
    print(f"results: {path}")
    return summary


if __name__ == "__main__":
    main()
