"""Why a class fails zero-shot across sources: a linear probe on the demo's frozen audio features.

The demo trains heads and projections over a frozen aisfx CNN. When a class's cross-source clips (from a package
the class never trained on) are missed, either the frozen features do not carry what tells the class apart in
the new package's audio, or the heads / text prompts lose it. This script fits a supervised linear probe
(``clapkit.evaluate.probe``) on the frozen features (pooled vector ⊕ mean frame) of the demo's training clips —
the same clips the heads train on, with their stored augmented views when ``features.clip_views`` > 1 — and
scores it on the in-source test and the cross-source clips. A class
the probe also misses (< 50 % of its clips) is marked ``features``; one the probe gets and the best trained arm
misses is marked ``heads/prompt``.

It reuses a finished demo run (every step is reused; run ``make demo`` first) and writes
``<out_dir>/results/cross_source_probe.csv``: the per-class columns of ``cross_source_classes.csv``, the probe's
accuracy and the reason, for every class of the cross-source split.

    HF_HUB_OFFLINE=1 python -m benchmarks.probe_cross_source [-c configs/demo.yaml]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

from clapkit.cache import FeatureStore
from clapkit.data.writer import shard_key
from clapkit.evaluate.probe import fit_linear_probe
from clapkit.io import atomic_write_text
from demo.config import load_config
from demo.features import view_key
from demo.pipeline import Demo, quiet_libraries

#: Below this probe accuracy a class's failure is put down to the frozen features.
FEATURES_BELOW = 0.5


def probe_features(store: FeatureStore, keys: list[str]) -> np.ndarray:
    """Pooled vector ⊕ mean over the real frames, per key [N, 2 D]."""
    rows = []
    for start in range(0, len(keys), 256):
        out = store.batch(keys[start : start + 256])
        mask = out.mask.unsqueeze(-1).float()
        mean = (out.sequence.float() * mask).sum(1) / mask.sum(1).clamp_min(1)
        rows.append(torch.cat([out.pooled.float(), mean], 1))
    return torch.cat(rows).numpy()


def training_clips(out_dir: Path, views: int = 1) -> tuple[list[str], list[str]]:
    """Feature keys and labels of the single training clips in the shards (listing line i → key ``train/i``),
    followed by those of their augmented views 1..``views``-1 (``features.clip_views``)."""
    keys, labels = [], []
    listing = out_dir / "scenes" / "train_listing.jsonl"
    for index, line in enumerate(listing.read_text().splitlines()):
        record = json.loads(line)
        if record.get("kind") == "clip":
            keys.append(f"train/{shard_key(index)}")
            labels.append(record["labels"][0])
    clean = list(keys)
    for view in range(1, views):
        keys += [view_key(key, view) for key in clean]
    return keys, labels * views


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.probe_cross_source",
        description="Fit a linear probe on the demo's frozen audio features of its training clips and say, per "
        "cross-source class, whether its zero-shot failures are in the features or in the heads / prompts.",
    )
    parser.add_argument("-c", "--config", default="configs/demo.yaml", help="demo config (default: %(default)s)")
    parser.add_argument("--l2", type=float, default=1e-3, help="probe L2 weight (default: %(default)s)")
    opts = parser.parse_args(argv)
    config = load_config(opts.config)
    torch.set_num_threads(config.threads)
    quiet_libraries()
    demo = Demo(config, progress=False)
    for step in (demo.dataset, demo.scenes, demo.benchmark, demo.shards, demo.features):
        step()
    out = Path(config.out_dir)
    zero_shot_csv = out / "results" / "cross_source_classes.csv"
    if not zero_shot_csv.is_file():
        raise SystemExit(f"{zero_shot_csv} not found: run the demo to its evaluation first (make demo)")
    audio, _ = demo.stores()
    sets = demo.eval_sets()
    keys, labels = training_clips(out, config.features.clip_views)
    probe = fit_linear_probe(probe_features(audio, keys), labels, l2=opts.l2)
    summary: dict = {
        "train_clips": len(keys) // config.features.clip_views,
        "clip_views": config.features.clip_views,
        "classes": len(set(labels)),
    }
    per_class: dict[str, list[bool]] = defaultdict(list)
    for name, data in (("in-source", sets.zeroshot), ("cross-source", sets.zeroshot_cross_source)):
        if data is None:
            continue
        truth = [data.classes[t] for t in data.targets.tolist()]
        hits = [p == t for p, t in zip(probe.predict(probe_features(audio, data.paths)), truth)]
        summary[name] = {"clips": len(hits), "probe_top1": float(np.mean(hits))}
        if name == "cross-source":
            for label, hit in zip(truth, hits):
                per_class[label].append(hit)
    rows = list(csv.DictReader(io.StringIO(zero_shot_csv.read_text())))
    columns = list(rows[0]) if rows else []
    arms = [c for c in columns if c not in ("class", "label", "held_out_package", "clips")]
    reasons: dict[str, int] = defaultdict(int)
    for row in rows:
        hits = per_class.get(row["label"], [])
        row["probe"] = f"{np.mean(hits):.4f}" if hits else ""
        best = max((float(row[a]) for a in arms if row[a]), default=0.0)
        if hits and best < FEATURES_BELOW:
            row["reason"] = "features" if np.mean(hits) < FEATURES_BELOW else "heads/prompt"
            reasons[row["reason"]] += 1
        else:
            row["reason"] = ""
    summary["failing_classes"] = dict(reasons)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*columns, "probe", "reason"])
    writer.writeheader()
    writer.writerows(rows)
    path = atomic_write_text(out / "results" / "cross_source_probe.csv", buf.getvalue())
    print(json.dumps(summary, indent=2))
    print(f"per class: {path}")
    return summary


if __name__ == "__main__":
    main()
