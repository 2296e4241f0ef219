"""Multi-seed comparison of the demo's training arms (``infonce`` vs ``compa_hardneg``) on held-out data.

One demo run trains one seed per arm, and on 500 benchmark pairs one run's group score has a standard error of
about 2 points — as large as the effect it should show. This script trains every arm for several seeds on the
demo's data and reports the mean ± standard deviation of each metric, and the difference of the arms with its
standard error.

It reuses the demo's steps (``demo.pipeline.Demo``): the dataset, scenes, benchmark, shards and stored tower features
are built once (by ``make demo`` or by this script) and every run trains only the heads and projections. A seed
fixes the head initialisation, the batch order and the caption draws, and all arms of one seed share them, so the
seeds pair the arms; both the unpaired standard error (``sqrt(s₁²/n + s₂²/n)``) and the paired one (standard
deviation of the per-seed differences / √n) are reported. Finished runs are kept in ``<out>/runs/*.json`` with
the fingerprint of what they depend on (features, model, training settings, arm, seed) and skipped when the
script is run again with the same (``--fresh`` redoes them).

    HF_HUB_OFFLINE=1 python -m benchmarks.bench_compositional [-c configs/demo.yaml] [--seeds 0 1 2 3 4]
        [--arms infonce compa_hardneg] [--threads 2] [--out runs/demo/bench]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from benchmarks.common import machine
from clapkit.evaluate.suite import COMPARISON_METRICS, evaluate_stored
from clapkit.io import atomic_write_json, atomic_write_text
from demo.config import load_config
from demo.pipeline import Demo, quiet_libraries

#: The targets: (metric, treatment arm, baseline arm, the treatment's least mean, the least difference). Each is met
#: when the treatment's mean reaches the level, the difference exceeds 2 unpaired SE, and zero-shot top-1 is not
#: lower by more than 2 SE. CompA-order: ≥ +5 points over infonce; CompA-attribute: the group score ≥ 25 %
#: (chance 16.7 %).
TARGETS = (
    ("compa_order.group_score", "compa_hardneg", "infonce", 0.0, 0.05),
    ("compa_attribute.group_score", "compa_hardneg", "infonce", 0.25, 0.0),
)


def _get(result: dict, path: str) -> float | None:
    node = result
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node)


def _slim(result: dict) -> dict:
    return {k: {m: v for m, v in r.items() if m not in ("confusion", "predictions")} for k, r in result.items()}


def run_one(demo: Demo, arm: str, seed: int, folder: Path) -> dict:
    """Train ``arm`` with ``seed`` on the stored features and evaluate it; the model is not kept."""
    start = time.perf_counter()
    model_dir = folder / "models" / f"{arm}_seed{seed}"
    model = demo.fit(arm, seed=seed, export_dir=model_dir, log_dir=folder / "logs" / f"{arm}_seed{seed}")
    trained = time.perf_counter() - start
    audio, text = demo.stores()
    result = evaluate_stored(model, audio, text, demo.eval_sets(), templates=demo.config.evaluate.zeroshot_templates)
    shutil.rmtree(model_dir, ignore_errors=True)
    return {
        "arm": arm,
        "seed": seed,
        "fingerprint": demo.arm_fingerprint(arm, seed),
        "train_s": round(trained, 1),
        "results": _slim(result),
    }


def summarize(runs: list[dict], arms: list[str]) -> tuple[str, dict]:
    """Mean ± std per metric and arm, and the target difference with its standard errors."""
    by_arm = {a: [r for r in runs if r["arm"] == a] for a in arms}
    width = max(len(label) for label, _, _ in COMPARISON_METRICS) + 2
    lines = [f"{'metric (%)':<{width}}" + "".join(f"{a + ' (n=' + str(len(by_arm[a])) + ')':>26}" for a in arms)]
    stats: dict = {"arms": {}, "machine": machine()}
    for label, key, _ in COMPARISON_METRICS:
        cells = []
        for a in arms:
            values = [v for r in by_arm[a] if (v := _get(r["results"], key)) is not None]
            if not values:
                cells.append(f"{'-':>26}")
                continue
            mean = statistics.fmean(values)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            stats["arms"].setdefault(a, {})[key] = {"mean": mean, "std": std, "n": len(values), "values": values}
            cells.append(f"{100 * mean:>17.1f} ± {100 * std:>4.1f}")
        if any(c.strip() != "-" for c in cells):
            lines.append(f"{label:<{width}}" + "".join(cells))
    stats["targets"] = []
    for target in TARGETS:
        found = _compare(by_arm, *target)
        if found is not None:
            stats["targets"].append(found[0])
            lines += ["", *found[1]]
    return "\n".join(lines), stats


def _compare(
    by_arm: dict[str, list[dict]], key: str, treated: str, base: str, level: float, margin: float
) -> tuple[dict, list[str]] | None:
    """The paired-seed comparison of ``key`` between two arms: its statistics and the lines reporting it."""
    if treated not in by_arm or base not in by_arm:
        return None
    a = {r["seed"]: _get(r["results"], key) for r in by_arm[treated]}
    b = {r["seed"]: _get(r["results"], key) for r in by_arm[base]}
    za = {r["seed"]: _get(r["results"], "zeroshot.top1") for r in by_arm[treated]}
    zb = {r["seed"]: _get(r["results"], "zeroshot.top1") for r in by_arm[base]}
    seeds = sorted(s for s in set(a) & set(b) if a[s] is not None and b[s] is not None)
    if len(seeds) < 2:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    mean = statistics.fmean(diffs)
    level_mean = statistics.fmean(a[s] for s in seeds)
    va, vb = statistics.variance([a[s] for s in seeds]), statistics.variance([b[s] for s in seeds])
    se_unpaired = math.sqrt(va / len(seeds) + vb / len(seeds))
    se_paired = statistics.stdev(diffs) / math.sqrt(len(seeds))
    zs_diff = statistics.fmean([za[s] - zb[s] for s in seeds])
    zs_se = math.sqrt(
        (statistics.variance([za[s] for s in seeds]) + statistics.variance([zb[s] for s in seeds])) / len(seeds)
    )
    separated = mean >= margin and mean > 2 * se_unpaired and level_mean >= level
    # "Not lower" is judged like the targets themselves: lower means lower by more than 2 standard errors.
    zs_lower = zs_diff < -2 * zs_se
    met = separated and not zs_lower
    stats = {
        "metric": key,
        "treatment": treated,
        "baseline": base,
        "seeds": seeds,
        "treatment_mean": level_mean,
        "difference": mean,
        "se_unpaired": se_unpaired,
        "se_paired": se_paired,
        "zeroshot_top1_difference": zs_diff,
        "zeroshot_top1_se_unpaired": zs_se,
        "zeroshot_top1_lower": zs_lower,
        "met": met,
    }
    lines = [
        f"{treated} − {base}, {key}: {100 * mean:+.1f} points over seeds {seeds} "
        f"(SE {100 * se_unpaired:.1f} unpaired, {100 * se_paired:.1f} paired; "
        f"{mean / se_unpaired if se_unpaired else math.inf:.1f} SE); {treated} mean {100 * level_mean:.1f}; "
        f"zero-shot top-1 {100 * zs_diff:+.1f} points (SE {100 * zs_se:.1f})"
    ]
    verdict = "met" if met else "NOT met"
    if separated and not met:
        verdict += f" (separated; zero-shot top-1 lower by {100 * -zs_diff:.1f} points, {-zs_diff / zs_se:.1f} SE)"
    wanted = [f"{treated} mean ≥ {100 * level:.0f} %"] if level else []
    wanted += [f"≥ {100 * margin:+.0f} points"] if margin else []
    lines.append(f"target ({', '.join([*wanted, '> 2 SE', 'zero-shot not lower by > 2 SE'])}): {verdict}")
    return stats, lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_compositional",
        description="Train each arm of the demo for several seeds on its stored features and compare them on the "
        "held-out benchmarks (mean ± std, difference ± SE).",
    )
    parser.add_argument("-c", "--config", default="configs/demo.yaml", help="demo config (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds (default: 0 1 2 3 4)")
    parser.add_argument("--arms", nargs="+", help="arms to train (default: every arm of the config)")
    parser.add_argument("--threads", type=int, help="torch threads (default: the config's)")
    parser.add_argument("--out", help="results folder (default: <out_dir>/bench)")
    parser.add_argument("--fresh", action="store_true", help="redo runs whose results are already there")
    opts = parser.parse_args(argv)
    config = load_config(opts.config)
    if opts.threads:
        config.threads = opts.threads
    torch.set_num_threads(config.threads)
    arms = opts.arms or list(config.train.arms)
    out = Path(opts.out or Path(config.out_dir) / "bench")
    quiet_libraries()
    demo = Demo(config, progress=False)
    (Path(config.out_dir)).mkdir(parents=True, exist_ok=True)
    for step in (demo.dataset, demo.scenes, demo.benchmark, demo.shards, demo.features):
        step()
    runs = []
    for seed in opts.seeds:
        for arm in arms:
            path = out / "runs" / f"{arm}_seed{seed}.json"
            if path.is_file() and not opts.fresh:
                previous = json.loads(path.read_text())
                if previous.get("fingerprint") == demo.arm_fingerprint(arm, seed):
                    runs.append(previous)
                    print(f"{arm} seed {seed}: reused {path}", flush=True)
                    continue
                print(f"{arm} seed {seed}: {path} came from other data or settings; training again", flush=True)
            run = run_one(demo, arm, seed, out)
            atomic_write_json(path, run)
            runs.append(run)
            r = run["results"]
            print(
                f"{arm} seed {seed}: order group {100 * _get(r, 'compa_order.group_score'):.1f}, "
                f"attribute group {100 * (_get(r, 'compa_attribute.group_score') or 0):.1f}, "
                f"zero-shot top-1 {100 * _get(r, 'zeroshot.top1'):.1f} ({run['train_s']:.0f} s)",
                flush=True,
            )
    table, stats = summarize(runs, arms)
    stats["config"] = str(opts.config)
    atomic_write_text(out / "summary.txt", table + "\n")
    atomic_write_json(out / "summary.json", stats)
    print(table)
    return stats


if __name__ == "__main__":
    main()
