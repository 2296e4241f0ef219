"""Full fine-tuning (SeaLLMs-Audio, Liu et al., 2025): the audio encoder, the projector and every LLM weight trained
together on multi-turn conversations.

Stages: ``data`` → ``stage1`` (alignment: the projector only, on "Describe the sound." conversations; encoder and LLM
frozen) → ``stage2`` (the full fine-tune: ``full_llm`` and ``unfreeze_encoder``, no LoRA, on two-turn
conversations; the loss covers every assistant turn) → ``evaluate`` (both models).

The data stage makes conversations from labelled clips (``train.recipes.lalm_data``'s sources): turn 1
"<Audio> What sound is this?" → the class ("A dog."); turn 2 a follow-up about the same clip that only makes sense
after turn 1 (``FOLLOWUPS``): "Describe it in one sentence." → the clip's caption, and "Is it loud or soft?" → the
clip's RMS level against ``data.loud_db``. Each training clip gives one conversation per follow-up in
``data.followups``.

Scores, for the stage-1 and the stage-2 model:

- **turn 1**: label accuracy on the held-out clips (``label_accuracy``, each class named by its aliases);
- **turn 2**, asked after the reference turn 1: ``describe`` — whether the description names the right class, and
  its word error rate against the caption; ``loudness`` — accuracy of the loud / soft answer;
- **text QA** (``clapkit.lalm.forgetting``, the shipped set's ``eval`` split): accuracy, and the KL divergence /
  agreement of the choice distribution against the stage-1 model, whose LLM is the untouched base — what a full
  fine-tune costs the LLM's text-only ability.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from clapkit.audio import load_audio
from clapkit.data.inputs import InputRecord
from clapkit.evaluate.report import format_table
from clapkit.io import atomic_write_json, atomic_write_text
from clapkit.lalm.data import ConversationSample
from clapkit.lalm.evaluate import label_accuracy, predict, wer
from clapkit.lalm.forgetting import choice_scores, load_text_qa, text_qa_metrics
from train.recipes.base import RecipeContext, train_stage
from train.recipes.clap_data import demo_fingerprints, read_records
from train.recipes.lalm_data import DESCRIBE, QUESTION, SOURCES, class_answer, write_conversations

__all__ = ["FOLLOWUPS", "LEVELS", "MODELS", "run"]

#: Follow-up name → the second user turn; its reference answer is made per clip by ``_followup_answer``.
FOLLOWUPS = {
    "describe": "Describe it in one sentence.",
    "loudness": "Is it loud or soft?",
}
#: The loudness answers' labels and the words that name them.
LEVELS = {"loud": ["loud"], "soft": ["soft", "quiet"]}
MODELS = ("stage1", "stage2")


def _turns(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    out = []
    for question, answer in pairs:
        out += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return out


def _level(path: str, sample_rate: int, loud_db: float) -> str:
    """``loud`` when the clip's RMS level is at least ``loud_db`` dBFS, else ``soft``."""
    wave = load_audio(path, sample_rate, name=path)
    db = 10 * torch.log10(wave.double().square().mean().clamp(min=1e-12))
    return "loud" if float(db) >= loud_db else "soft"


def _followup_answer(kind: str, record: Mapping[str, Any]) -> str:
    return record["caption"] if kind == "describe" else f"It is {record['level']}."


def _data(ctx: RecipeContext) -> dict[str, Any]:
    """The data stage: stage-1 (alignment) and stage-2 (two-turn) shards and the held-out listing."""
    cfg = ctx.config.get("data") or {}
    source = cfg.get("source")
    if source not in SOURCES:
        raise ValueError(f"data.source {source!r}: expected one of {', '.join(SOURCES)}")
    followups = list(cfg.get("followups") or [])
    unknown = [f for f in followups if f not in FOLLOWUPS]
    if not followups or unknown:
        raise ValueError(f"data.followups {followups}: give one or more of {', '.join(FOLLOWUPS)}")
    if "loudness" in followups and "loud_db" not in cfg:
        raise ValueError("data.loud_db: the loudness follow-up needs the level (dBFS, RMS) from which a clip is loud")

    def run(folder: Path) -> dict[str, Any]:
        rate = int(cfg["sample_rate"])
        train, test, aliases = SOURCES[source](ctx, cfg, folder)
        if "loudness" in followups:
            for r in train + test:
                r["level"] = _level(r["audio"], rate, float(cfg["loud_db"]))
        stage1 = [
            InputRecord(r["audio"], {"conversation": _turns((DESCRIBE, r["caption"])), "labels": [r["label"]]})
            for r in train
        ]
        stage2 = [
            InputRecord(
                r["audio"],
                {
                    "conversation": _turns(
                        (QUESTION, class_answer(aliases[r["label"]])), (FOLLOWUPS[kind], _followup_answer(kind, r))
                    ),
                    "labels": [r["label"]],
                    "followup": kind,
                },
            )
            for r in train
            for kind in followups
        ]
        made = write_conversations(ctx, folder, {"stage1": stage1, "stage2": stage2}, rate)
        keys = ("audio", "label", "caption", "level")
        listing = atomic_write_text(
            folder / "test.jsonl", "".join(json.dumps({k: r[k] for k in keys if k in r}) + "\n" for r in test)
        )
        levels = {lv: sum(r.get("level") == lv for r in train) for lv in LEVELS} if "loudness" in followups else {}
        return {
            "stage1_shards": str(folder / "stage1"),
            "stage2_shards": str(folder / "stage2"),
            "test": str(listing),
            "aliases": aliases,
            "followups": followups,
            "conversations": made,
            "train_levels": levels,
            "test_clips": len(test),
            "classes": len(aliases),
        }

    parts: dict[str, Any] = {"data": cfg, "seed": ctx.config.get("seed")}
    if source == "demo":
        parts["demo"] = demo_fingerprints(cfg)
    return ctx.stage("data", parts, run)


def run(ctx: RecipeContext) -> dict[str, Any]:
    """Data, stage 1, stage 2, evaluation; returns each stage's result and ``table``."""
    stages = ctx.config.get("stages") or {}
    if set(stages) != set(MODELS):
        raise ValueError(f"fullft: stages {sorted(stages)}; expected exactly {', '.join(MODELS)}")
    data = _data(ctx)
    out: dict[str, Any] = {"data": data}
    out["stage1"] = stage1 = train_stage(
        ctx, "stage1", stages["stage1"], app="lalm", paths={"data.stage1_shards": data["stage1_shards"]}
    )
    # Stage-1 conversations are replayable (data.replay_ratio > 0); the recipe has no text-only data.
    out["stage2"] = train_stage(
        ctx,
        "stage2",
        stages["stage2"],
        app="lalm",
        paths={
            "model.model.init_args.directory": stage1["model"],
            "data.stage2_shards": data["stage2_shards"],
            "data.stage1_shards": data["stage1_shards"],
            "data.text_shards": None,
        },
    )
    evaluation = ctx.config.get("evaluate") or {}
    result = ctx.stage("evaluate", {"evaluate": evaluation}, lambda folder: _evaluate(ctx, out, evaluation, folder))
    out["evaluate"], out["table"] = result, result["table"]
    atomic_write_json(ctx.out / "results.json", {"recipe": ctx.name, "scale": ctx.scale, **result})
    atomic_write_text(ctx.out / "results.md", f"# {ctx.name} ({ctx.scale})\n\n```\n{result['table']}\n```\n")
    return out


def _samples(tests: list[dict[str, Any]], aliases: dict[str, list[str]], followups: list[str], rate: int) -> list:
    """Turn-1 questions, then each follow-up asked after the reference turn 1, for every held-out clip."""
    samples = []
    for i, t in enumerate(tests):
        first = (QUESTION, class_answer(aliases[t["label"]]))
        meta = {"kind": "label", "answer": t["label"], "turn": 1, "followup": None, "label": t["label"]}
        samples.append(ConversationSample.from_sources(f"t{i}", _turns(first)[:1], [t["audio"]], rate, meta))
        for kind in followups:
            # The whole conversation: the collator prompts with every turn before the last answer.
            messages = _turns(first, (FOLLOWUPS[kind], _followup_answer(kind, t)))
            meta = {"kind": "open", "turn": 2, "followup": kind, "label": t["label"], "level": t.get("level")}
            samples.append(ConversationSample.from_sources(f"t{i}-{kind}", messages, [t["audio"]], rate, meta))
    return samples


def _turn2(kind: str, records: list[dict[str, Any]], aliases: dict[str, list[str]]) -> dict[str, Any]:
    preds = [r["prediction"] for r in records]
    if kind == "describe":
        names = label_accuracy(preds, [r["label"] for r in records], aliases)
        return {"names_class": names["accuracy"], "wer": wer([r["answer"] for r in records], preds), "n": len(preds)}
    return label_accuracy(preds, [r["level"] for r in records], LEVELS)


def _evaluate(ctx: RecipeContext, out: dict[str, Any], cfg: dict[str, Any], folder: Path) -> dict[str, Any]:
    import clapkit.lalm

    items = load_text_qa(cfg.get("text_qa"), split="eval")
    if cfg.get("text_qa_limit"):  # evenly spaced, so every topic keeps its share
        step = len(items) / int(cfg["text_qa_limit"])
        items = [items[int(i * step)] for i in range(min(len(items), int(cfg["text_qa_limit"])))]
    data = out["data"]
    tests = read_records(Path(data["test"]))
    if cfg.get("test_limit"):
        tests = tests[: int(cfg["test_limit"])]
    aliases, followups = data["aliases"], data["followups"]
    batch_size = int(cfg.get("batch_size", 16))
    reference = None
    metrics: dict[str, Any] = {}
    for name in MODELS:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            model = clapkit.lalm.load(out[name]["model"])
        samples = _samples(tests, aliases, followups, model.sample_rate)
        with torch.inference_mode():
            preds = predict(model, samples, batch_size=batch_size, max_new_tokens=int(cfg.get("max_new_tokens", 16)))
            scores = choice_scores(model, items, batch_size=batch_size, progress=ctx.progress)
        del model
        reference = scores if reference is None else reference  # stage 1: its LLM is the base
        for s, p in zip(samples, preds):
            p.update({k: s.meta.get(k) for k in ("turn", "followup", "label", "level")})
        atomic_write_text(folder / f"predictions_{name}.jsonl", "".join(json.dumps(p) + "\n" for p in preds))
        first = [p for p in preds if p["turn"] == 1]
        m = {
            "turn1": label_accuracy([p["prediction"] for p in first], [p["answer"] for p in first], aliases),
            "turn2": {k: _turn2(k, [p for p in preds if p["followup"] == k], aliases) for k in followups},
            "text_qa": text_qa_metrics(scores, items, reference=reference),
            "examples": {
                "turn1": [p["prediction"] for p in first[:3]],
                **{k: [p["prediction"] for p in preds if p["followup"] == k][:3] for k in followups},
            },
        }
        metrics[name] = m
        ctx.log(f"        {name}: " + ", ".join(f"{h} {c}" for h, c in zip(_header(followups)[1:], _cells(m))))
    rows = [(name, *_cells(m)) for name, m in metrics.items()]
    chance = {"turn1": 1 / len(aliases), "text_qa": metrics[MODELS[0]]["text_qa"]["chance"]}
    return {
        "models": metrics,
        "table": format_table(rows, header=_header(followups, chance)),
        "test_clips": len(tests),
        "text_items": len(items),
        "chance": chance,
    }


def _header(followups: list[str], chance: Mapping[str, float] | None = None) -> tuple[str, ...]:
    """The table's columns (with the chance levels when given)."""
    turn1, text = "turn 1 label %", "text QA %"
    if chance is not None:
        turn1, text = f"{turn1} (chance {100 * chance['turn1']:.1f})", f"{text} (chance {100 * chance['text_qa']:.0f})"
    cols = ["model", turn1]
    for kind in followups:
        cols += ["turn 2 names class %", "turn 2 WER %"] if kind == "describe" else ["turn 2 loud/soft %"]
    return (*cols, text, "text QA KL to stage 1", "agrees with stage 1 %")


def _cells(m: Mapping[str, Any]) -> tuple[str, ...]:
    """One model's row after its name, in ``_header``'s order."""
    cells = [f"{100 * m['turn1']['accuracy']:.1f}"]
    for kind, t in m["turn2"].items():
        if kind == "describe":
            cells += [f"{100 * t['names_class']:.1f}", f"{100 * t['wer']:.1f}"]
        else:
            cells.append(f"{100 * t['accuracy']:.1f}")
    qa = m["text_qa"]
    return (*cells, f"{100 * qa['accuracy']:.1f}", f"{qa['kl_to_reference']:.4f}", f"{100 * qa['agreement']:.1f}")
