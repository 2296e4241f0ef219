"""AF-CLAP (Audio Flamingo 2, Ghosh et al., 2025): the contrastive encoder, then the same encoder as the frozen
front end of gated cross-attention on long audio.

Stages:

1. ``data`` — training listing, shards and held-out sets (``train.recipes.clap_data``);
2. ``paraphrases`` — LLM-written paraphrase positives for every training caption, through the command users run
   (``clapkit llm-captions``: SmolLM2 by default, each line validated, completions cached in SQLite so a rerun
   generates nothing again), then the shards written again from the enriched listing;
3. ``afclap`` — the AF-CLAP loss: M positives (the caption's paraphrases, the composer's and the LLM's) and N
   composition negatives (the composer's swapped orders, relations and bindings) per clip, evaluated on zero-shot,
   retrieval and CompA like the CompA recipe;
4. ``long_audio`` — recordings of minutes (``long.seconds``, ≥ 120 in the tiny test) made of a few segments, each
   one class's clips repeated with gaps, as conversation shards: "Describe the recording in order." (stage 1) and
   "What sound is heard first / last?" (stage 2);
5. ``xattn_stage1`` / ``xattn_stage2`` — the trained encoder frozen, cutting each recording into its clip-length
   windows (sliding windows, ``encoder_batch`` at a time), under gated cross-attention blocks (``xattn``) in the
   LLM: the blocks alone, then the blocks and LoRA, as configs/lalm/afcross.yaml;
6. ``evaluate`` — both LALM stages on held-out recordings: accuracy of the first and the last sound, with the
   windows each recording took.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from clapkit.audio import load_audio
from clapkit.compose.phrases import phrase_for
from clapkit.data.inputs import InputRecord, read_jsonl
from clapkit.data.writer import WriterConfig, write_shards
from clapkit.evaluate.report import format_table
from clapkit.io import atomic_write_json, atomic_write_text
from clapkit.lalm.data import ConversationSample
from clapkit.lalm.evaluate import label_accuracy, predict
from train.recipes.base import RecipeContext, clap_stage, train_stage
from train.recipes.clap_data import clap_data, eval_sets, read_records
from train.recipes.lalm_data import write_conversations

__all__ = ["DESCRIBE_LONG", "QUESTIONS", "STAGES", "compose_long", "run"]

STAGES = ("afclap", "xattn_stage1", "xattn_stage2")
DESCRIBE_LONG = "<Audio>\nDescribe the recording in order."
#: Stage-2 and evaluation questions on a long recording → which segment answers them.
QUESTIONS = {
    "first": "<Audio>\nWhat sound is heard first in this recording?",
    "last": "<Audio>\nWhat sound is heard last in this recording?",
}


def run(ctx: RecipeContext) -> dict[str, Any]:
    """Every stage in order; returns each stage's result and ``table`` (the LALM evaluation)."""
    stages = ctx.config.get("stages") or {}
    if set(stages) != set(STAGES):
        raise ValueError(f"afclap: stages {sorted(stages)}; expected exactly {', '.join(STAGES)}")
    data = clap_data(ctx)
    out: dict[str, Any] = {"data": data}
    out["paraphrases"] = para = paraphrases(ctx, data)
    out["afclap"] = encoder = clap_stage(
        ctx,
        "afclap",
        stages["afclap"],
        paths={"data.train_shards": para["train_shards"], "data.val_shards": data.get("val_shards")},
        eval_sets=lambda: eval_sets(data["eval"]),
    )
    out["long_audio"] = long = long_audio(ctx, data)
    out["xattn_stage1"] = stage1 = train_stage(
        ctx,
        "xattn_stage1",
        stages["xattn_stage1"],
        app="lalm",
        paths={
            "model.model.init_args.encoder": encoder["model"],  # the AF-CLAP export, frozen
            "model.model.init_args.encoder_overrides": None,
            "data.stage1_shards": long["stage1_shards"],
        },
    )
    out["xattn_stage2"] = train_stage(
        ctx,
        "xattn_stage2",
        stages["xattn_stage2"],
        app="lalm",
        paths={
            "model.model.init_args.directory": stage1["model"],
            "data.stage2_shards": long["stage2_shards"],
            "data.stage1_shards": long["stage1_shards"],  # replayed
        },
    )
    evaluation = ctx.config.get("evaluate") or {}
    result = ctx.stage("evaluate", {"evaluate": evaluation}, lambda folder: _evaluate(ctx, out, evaluation))
    out["evaluate"] = result
    out["table"] = result["table"]
    summary = {
        "recipe": ctx.name,
        "scale": ctx.scale,
        "encoder": ctx.results.get("afclap"),
        "paraphrases": {k: v for k, v in para.items() if k != "examples"},
        **result,
        "timings": ctx.runner.timings,
    }
    atomic_write_json(ctx.out / "results.json", summary)
    encoder_table = "\n".join(f"{k}: {v}" for k, v in _encoder_lines(ctx.results.get("afclap") or {}))
    atomic_write_text(
        ctx.out / "results.md",
        f"# {ctx.name} ({ctx.scale})\n\n## AF-CLAP encoder\n\n```\n{encoder_table}\n```\n\n"
        f"## Long audio through gated cross-attention\n\n```\n{result['table']}\n```\n",
    )
    return out


def _encoder_lines(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    keys = (
        ("zero-shot top-1 %", "zeroshot", "top1"),
        ("text→audio R@1 %", "retrieval", "text_to_audio_R@1"),
        ("CompA-order group %", "compa_order", "group_score"),
        ("CompA-attribute group %", "compa_attribute", "group_score"),
    )
    return [(label, f"{100 * metrics[s][k]:.1f}") for label, s, k in keys if k in metrics.get(s, {})]


# ---------------------------------------------------------------------------------------------- paraphrases
def paraphrases(ctx: RecipeContext, data: Mapping[str, Any]) -> dict[str, Any]:
    """``clapkit llm-captions --kind positives`` over the training listing, then its shards (``paraphrases``)."""
    cfg = dict(ctx.config.get("paraphrase") or {})
    listing = cfg.get("listing") or data.get("listing")
    if not listing:
        raise ValueError(
            "paraphrase.listing: give the JSONL listing the training shards are written from "
            "(data.source: synthetic makes one)"
        )
    cache = Path(cfg.get("cache") or ctx.out / "llm_captions.sqlite").resolve()  # outlives a redone stage
    sample_rate = int(cfg.get("sample_rate") or (ctx.config.get("data") or {}).get("sample_rate") or 48_000)

    def run(folder: Path) -> dict[str, Any]:
        from clapkit.cli import main as clapkit_main

        enriched = folder / "listing.jsonl"
        argv = [
            "llm-captions", str(listing), "--kind", "positives", "--out", str(enriched), "--cache", str(cache),
            "--llm", str(cfg.get("llm", "smollm2")), "--n", str(int(cfg.get("n", 3))),
            "--batch-size", str(int(cfg.get("batch_size", 8))),
            "--max-new-tokens", str(int(cfg.get("max_new_tokens", 64))),
        ]  # fmt: skip
        if not ctx.progress:
            argv.append("--quiet")
        if cfg.get("limit") is not None:  # only the first records go to the LLM (a quick look at its paraphrases)
            argv += ["--limit", str(int(cfg["limit"]))]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = clapkit_main(argv)
        if code != 0:
            raise RuntimeError(f"clapkit {' '.join(argv)}: exit {code}")
        summary = json.loads(printed.getvalue())
        before, after = read_records(Path(listing)), read_records(enriched)
        gained = [
            (b, a) for b, a in zip(before, after) if len(a.get("positives") or []) > len(b.get("positives") or [])
        ]
        examples = [
            f"{a['captions'][0] if a.get('captions') else a.get('caption')}\n"
            + "".join(f"  + {p}\n" for p in a["positives"][len(b.get("positives") or []) :])
            for b, a in gained[:8]
        ]
        atomic_write_text(folder / "examples.txt", "\n".join(examples))
        writer = WriterConfig(sample_rate=sample_rate, counterfactual_audio=True, max_count=64)
        manifest = write_shards(
            read_jsonl(enriched), folder / "shards", writer, source=str(enriched), progress=ctx.progress
        )
        if manifest.skipped:
            raise RuntimeError(f"{folder / 'shards'}: {manifest.skipped} samples skipped; see its report.json")
        return {
            "train_shards": str(folder / "shards"),
            "listing": str(enriched),
            "records": len(after),
            "with_llm_positives": len(gained),
            "llm_positives": summary.get("added", 0),
            "llm": summary,
            "samples": manifest.total,
        }

    return ctx.stage("paraphrases", {"paraphrase": cfg, "listing": str(listing), "rate": sample_rate}, run)


# ---------------------------------------------------------------------------------------------- long audio
def _clip_pool(data: Mapping[str, Any], cfg: Mapping[str, Any], split: str) -> dict[str, list[str]]:
    """Class → clip paths of a split: the synthetic clips of the data stage, or ``long.<split>_clips`` (JSONL of
    ``{"audio", "label"}``)."""
    pool: dict[str, list[str]] = {}
    given = cfg.get(f"{split}_clips")
    if given:
        for row in read_records(Path(given)):
            pool.setdefault(row["label"], []).append(row["audio"])
    elif data.get("clips"):
        for path in sorted(Path(data["clips"][split]).glob("*/*.wav")):
            pool.setdefault(path.parent.name, []).append(str(path))
    if not pool:
        raise ValueError(f"long.{split}_clips: give a JSONL of {{audio, label}} clips (data.source has none)")
    return pool


def compose_long(
    pool: Mapping[str, list[str]],
    order: list[str],
    seconds: float,
    sample_rate: int,
    rng: np.random.Generator,
    gap: tuple[float, float] = (0.1, 0.6),
) -> np.ndarray:
    """A recording of ``seconds``: one segment per class in ``order``, equal lengths, each filled with that class's
    clips (drawn at random, repeated as needed) separated by silent gaps; float32 mono at ``sample_rate``."""
    seg = int(seconds * sample_rate / len(order))
    out = np.zeros(seg * len(order), dtype=np.float32)
    cache: dict[str, np.ndarray] = {}
    for k, label in enumerate(order):
        pos = k * seg
        while pos < (k + 1) * seg:
            path = pool[label][int(rng.integers(len(pool[label])))]
            if path not in cache:
                cache[path] = load_audio(path, sample_rate, name=path).numpy().reshape(-1)
            clip = cache[path][: (k + 1) * seg - pos]
            out[pos : pos + clip.size] = clip
            pos += clip.size + int(rng.uniform(*gap) * sample_rate)
    return out


def _subject(label: str) -> str:
    return phrase_for(label).subject


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _describe(order: list[str]) -> str:
    parts = [_subject(c) for c in order]
    middle = "".join(f", then {p}" for p in parts[1:-1])
    return _sentence(f"first {parts[0]}{middle}, and last {parts[-1]}")


def long_audio(ctx: RecipeContext, data: Mapping[str, Any]) -> dict[str, Any]:
    """Long recordings and their conversations (``long_audio``): stage-1 descriptions, stage-2 first/last questions,
    and the held-out test listing."""
    cfg = dict(ctx.config.get("long") or {})
    for key in ("sample_rate", "seconds", "segments", "train_recordings", "test_recordings"):
        if key not in cfg:
            raise ValueError(f"long.{key}: missing (the long-audio data of the cross-attention stages)")
    seed, sample_rate, seconds = int(ctx.config.get("seed", 0)), int(cfg["sample_rate"]), float(cfg["seconds"])

    def run(folder: Path) -> dict[str, Any]:
        rng = np.random.default_rng(seed)
        pools = {split: _clip_pool(data, cfg, split) for split in ("train", "test")}
        classes = sorted(set(pools["train"]) & set(pools["test"]))
        if len(classes) < int(cfg["segments"]):
            raise ValueError(f"long.segments={cfg['segments']}: only {len(classes)} classes have train and test clips")
        rows: dict[str, list[dict[str, Any]]] = {}
        for split in ("train", "test"):
            (folder / "audio" / split).mkdir(parents=True, exist_ok=True)
            rows[split] = []
            for i in range(int(cfg[f"{split}_recordings"])):
                order = [str(c) for c in rng.choice(classes, size=int(cfg["segments"]), replace=False)]
                wave = compose_long(pools[split], order, seconds, sample_rate, rng)
                path = folder / "audio" / split / f"{split}_{i:03d}.flac"
                sf.write(path, wave, sample_rate, subtype="PCM_16")
                rows[split].append({"audio": str(path), "order": order, "seconds": wave.size / sample_rate})
        stage1 = [
            InputRecord(
                r["audio"], {"conversation": _turns(DESCRIBE_LONG, _describe(r["order"])), "labels": r["order"]}
            )
            for r in rows["train"]
        ]
        stage2 = [
            InputRecord(
                r["audio"],
                {"conversation": _turns(QUESTIONS[q], _sentence(_subject(r["order"][i]))), "labels": r["order"]},
            )
            for r in rows["train"]
            for q, i in (("first", 0), ("last", -1))
        ]
        made = write_conversations(ctx, folder, {"stage1": stage1, "stage2": stage2}, sample_rate)
        test = atomic_write_text(folder / "test.jsonl", "".join(json.dumps(r) + "\n" for r in rows["test"]))
        return {
            "stage1_shards": str(folder / "stage1"),
            "stage2_shards": str(folder / "stage2"),
            "test": str(test),
            "aliases": {c: [_subject(c), c.replace("_", " ")] for c in classes},
            "conversations": made,
            "seconds": seconds,
        }

    return ctx.stage("long_audio", {"long": cfg, "seed": seed}, run)


def _turns(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


# ---------------------------------------------------------------------------------------------- evaluation
def _evaluate(ctx: RecipeContext, out: dict[str, Any], cfg: Mapping[str, Any]) -> dict[str, Any]:
    import clapkit.lalm

    long = out["long_audio"]
    tests = read_records(Path(long["test"]))
    aliases = long["aliases"]
    batch_size = int(cfg.get("batch_size", 4))
    metrics: dict[str, dict[str, Any]] = {}
    for stage in ("xattn_stage1", "xattn_stage2"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)  # peft's deprecation notices on load
            model = clapkit.lalm.load(out[stage]["model"])
        limit = model.config.max_audio_seconds
        if limit is not None and limit < max(t["seconds"] for t in tests):
            raise ValueError(f"{stage}: max_audio_seconds={limit} would cut the {long['seconds']:g} s recordings")
        clip = model.encoder.config.audio.clip_samples
        row: dict[str, Any] = {
            "windows": [math.ceil(t["seconds"] * model.sample_rate / clip) for t in tests],
            "encoder_window_seconds": clip / model.sample_rate,
        }
        for question, index in (("first", 0), ("last", -1)):
            samples = [
                ConversationSample.from_sources(
                    f"{question}{i}", [{"role": "user", "content": QUESTIONS[question]}], [t["audio"]],
                    model.sample_rate, {"answer": t["order"][index]},
                )
                for i, t in enumerate(tests)
            ]  # fmt: skip
            with torch.inference_mode():
                records = predict(
                    model, samples, batch_size=batch_size, max_new_tokens=int(cfg.get("max_new_tokens", 8))
                )
            row[question] = label_accuracy(
                [r["prediction"] for r in records], [t["order"][index] for t in tests], aliases
            )
            row[f"{question}_examples"] = [r["prediction"] for r in records[:3]]
        metrics[stage] = row
        ctx.log(
            f"        {stage}: first {100 * row['first']['accuracy']:.1f} %, "
            f"last {100 * row['last']['accuracy']:.1f} % "
            f"({len(tests)} recordings of {long['seconds']:g} s, {row['windows'][0]} windows each)"
        )
        del model
    chance = 1 / len(aliases)
    header = ("model", f"first sound acc % (chance {100 * chance:.1f})", "last sound acc %", "windows / recording")
    rows = [
        (
            name,
            f"{100 * m['first']['accuracy']:.1f}",
            f"{100 * m['last']['accuracy']:.1f}",
            str(m["windows"][0]),
        )
        for name, m in metrics.items()
    ]
    return {
        "lalm": metrics,
        "table": format_table(rows, header=header),
        "test_recordings": len(tests),
        "recording_seconds": long["seconds"],
        "chance": chance,
    }
