"""Forgetting: what instruction tuning on audio costs the LLM's text-only ability, and four remedies side by side.

Stages: ``data`` (conversation shards, ``train.recipes.lalm_data``) → ``stage1`` (projector alignment; the LLM is
untouched, so this model is the base) → ``replay_data`` (the base LLM's own answers to the replay prompts of the
shipped text QA set, as text-only shards) → ``stage2`` (LoRA instruction tuning on the audio questions, no replay)
and ``stage2_replay`` (the same, with stage-1 conversations and the self-replay text mixed in) → ``evaluate``:

- **text QA** (``clapkit.lalm.forgetting``, the shipped set's ``eval`` split): accuracy, and the KL divergence /
  agreement of each model's choice distribution against the base's;
- **audio task**: label accuracy on the held-out clips;

for the base, stage 2 without and with replay, stage 2 with its LoRA update discounted at inference
(``evaluate.lora_scales``) and stage 2 merged with the base LLM by weight interpolation (``evaluate.merge_alphas``).
For a LoRA-tuned LLM the last two are the same map (a test checks it), so the two lists sample one curve.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from clapkit.evaluate.report import format_table
from clapkit.io import atomic_write_json, atomic_write_text
from clapkit.lalm.data import ConversationSample, write_text_conversations
from clapkit.lalm.evaluate import label_accuracy, predict
from clapkit.lalm.forgetting import (
    choice_scores,
    interpolate_llm,
    llm_state,
    load_text_qa,
    reply_scores,
    reset_lora_scale,
    scale_lora,
    self_replay_conversations,
    text_qa_metrics,
)
from train.recipes.base import RecipeContext, train_stage
from train.recipes.lalm_data import QUESTION, lalm_data, test_items

__all__ = ["STAGES", "run"]

STAGES = ("stage1", "stage2", "stage2_replay")


def _load(path: str, *, merge_lora: bool = False):
    import clapkit.lalm

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # peft's deprecation notices on load
        return clapkit.lalm.load(path, merge_lora=merge_lora)


def run(ctx: RecipeContext) -> dict[str, Any]:
    """Every stage in order; returns each stage's result and ``table`` (the side-by-side evaluation)."""
    stages = ctx.config.get("stages") or {}
    if set(stages) != set(STAGES):
        raise ValueError(f"forgetting: stages {sorted(stages)}; expected exactly {', '.join(STAGES)}")
    data = lalm_data(ctx)
    out: dict[str, Any] = {"data": data}
    out["stage1"] = stage1 = train_stage(
        ctx, "stage1", stages["stage1"], app="lalm", paths={"data.stage1_shards": data["stage1_shards"]}
    )
    cfg = ctx.config.get("replay") or {}

    def make_replay(folder: Path) -> dict[str, Any]:
        model = _load(stage1["model"])
        items = load_text_qa(cfg.get("text_qa"), split="replay")
        convs = self_replay_conversations(model, items, max_new_tokens=int(cfg.get("max_new_tokens", 32)))
        write_text_conversations(convs, folder / "text")
        atomic_write_text(
            folder / "examples.txt", "\n\n".join(f"{c[0]['content']}\n→ {c[1]['content']}" for c in convs[:5])
        )
        return {"text_shards": str(folder / "text"), "conversations": len(convs)}

    out["replay_data"] = replay = ctx.stage("replay_data", {"replay": cfg}, make_replay)
    base_paths = {"model.model.init_args.directory": stage1["model"], "data.stage2_shards": data["stage2_shards"]}
    out["stage2"] = train_stage(
        ctx,
        "stage2",
        stages["stage2"],
        app="lalm",
        paths={**base_paths, "data.replay_ratio": 0.0, "data.stage1_shards": None, "data.text_shards": None},
    )
    out["stage2_replay"] = train_stage(
        ctx,
        "stage2_replay",
        stages["stage2_replay"],
        app="lalm",
        paths={**base_paths, "data.stage1_shards": data["stage1_shards"], "data.text_shards": replay["text_shards"]},
    )
    evaluation = ctx.config.get("evaluate") or {}
    result = ctx.stage("evaluate", {"evaluate": evaluation}, lambda folder: _evaluate(ctx, out, evaluation, folder))
    ctx.results = result["variants"]
    out["evaluate"] = result
    out["table"] = result["table"]
    atomic_write_json(ctx.out / "results.json", {"recipe": ctx.name, "scale": ctx.scale, **result})
    atomic_write_text(ctx.out / "results.md", f"# {ctx.name} ({ctx.scale})\n\n```\n{result['table']}\n```\n")
    return out


def _drop(metrics: dict[str, dict[str, Any]], name: str) -> float:
    """How much less likely the base's own text answers became under ``name`` (nat per token)."""
    key = "base_answer_logprob"
    return float(metrics["base (stage 1)"]["text_qa"][key] - metrics[name]["text_qa"][key])


def _question(i: int, item: dict[str, Any], sample_rate: int) -> ConversationSample:
    messages = [{"role": "user", "content": QUESTION}]
    meta = {"kind": "label", "answer": item["label"]}
    return ConversationSample.from_sources(f"t{i}", messages, [item["audio"]], sample_rate, meta)


def _evaluate(ctx: RecipeContext, out: dict[str, Any], cfg: dict[str, Any], folder: Path) -> dict[str, Any]:
    items = load_text_qa(cfg.get("text_qa"), split="eval")
    if cfg.get("text_qa_limit"):  # evenly spaced, so every topic keeps its share
        step = len(items) / int(cfg["text_qa_limit"])
        items = [items[int(i * step)] for i in range(min(len(items), int(cfg["text_qa_limit"])))]
    tests = test_items(out["data"]["test"], cfg.get("test_limit"))
    aliases = out["data"]["aliases"]
    batch_size = int(cfg.get("batch_size", 16))
    stage1, plain, replay = (out[s]["model"] for s in STAGES)
    scales = [float(x) for x in cfg.get("lora_scales", [0.5])]
    alphas = [float(x) for x in cfg.get("merge_alphas", [])]

    def variants() -> Iterator[tuple[str, Any]]:
        """Each model in turn, sharing loads: stage 2 without replay is loaded once with its LoRA layers, scaled in
        place, then merged in place and interpolated."""
        base = _load(stage1)
        base_llm = llm_state(base)
        yield "base (stage 1)", base
        del base
        tuned = _load(plain)
        yield "stage 2, no replay", tuned
        yield "stage 2, replay", _load(replay, merge_lora=True)
        for scale in scales:
            scale_lora(tuned, scale)
            yield f"no replay, LoRA x {scale:g}", tuned
            reset_lora_scale(tuned)
        if alphas:
            tuned.llm = tuned.llm.merge_and_unload()
            merged = llm_state(tuned)
            for alpha in alphas:
                tuned.llm.load_state_dict(merged)
                interpolate_llm(tuned, base_llm, alpha)
                yield f"no replay, merged a={alpha:g}", tuned

    reference = None
    base_answers: list = []
    metrics: dict[str, dict[str, Any]] = {}
    for name, model in variants():
        with torch.inference_mode():
            scores = choice_scores(model, items, batch_size=batch_size, progress=ctx.progress)
            if reference is None:  # the base: its choice distribution and its own answers are the references
                reference = scores
                base_answers = self_replay_conversations(
                    model, items, batch_size=batch_size, max_new_tokens=int(cfg.get("answer_tokens", 16))
                )
            text = text_qa_metrics(scores, items, reference=reference)
            text["base_answer_logprob"] = float(reply_scores(model, base_answers, batch_size=batch_size).mean())
            samples = [_question(i, t, model.sample_rate) for i, t in enumerate(tests)]
            records = predict(model, samples, batch_size=batch_size, max_new_tokens=int(cfg.get("max_new_tokens", 8)))
        audio = label_accuracy([r["prediction"] for r in records], [t["label"] for t in tests], aliases)
        metrics[name] = {"text_qa": text, "audio_label": audio, "examples": [r["prediction"] for r in records[:3]]}
        ctx.log(
            f"        {name}: text QA {100 * text['accuracy']:.1f} % (KL to base {text['kl_to_reference']:.4f}, "
            f"base answers {text['base_answer_logprob']:.3f} nat/token), audio label {100 * audio['accuracy']:.1f} %"
        )
    chance_text = metrics["base (stage 1)"]["text_qa"]["chance"]
    rows = [
        (
            name,
            f"{100 * m['text_qa']['accuracy']:.1f}",
            f"{m['text_qa']['kl_to_reference']:.4f}",
            f"{100 * m['text_qa']['agreement']:.1f}",
            f"{m['text_qa']['base_answer_logprob']:.3f}",
            f"{100 * m['audio_label']['accuracy']:.1f}",
        )
        for name, m in metrics.items()
    ]
    header = (
        "model",
        f"text QA acc % (chance {100 * chance_text:.0f})",
        "KL to base",
        "agrees with base %",
        "base answers nat/token",
        f"audio label acc % (chance {100 / len(aliases):.1f})",
    )
    table = format_table(rows, header=header)
    return {
        "variants": metrics,
        "table": table,
        "text_items": len(items),
        "test_clips": len(tests),
        "forgetting": {  # text QA drift of stage 2 with and without replay, against the base
            "kl_no_replay": metrics["stage 2, no replay"]["text_qa"]["kl_to_reference"],
            "kl_replay": metrics["stage 2, replay"]["text_qa"]["kl_to_reference"],
            "base_answer_drop_no_replay": _drop(metrics, "stage 2, no replay"),
            "base_answer_drop_replay": _drop(metrics, "stage 2, replay"),
            "accuracy_drop_no_replay": float(
                metrics["base (stage 1)"]["text_qa"]["accuracy"] - metrics["stage 2, no replay"]["text_qa"]["accuracy"]
            ),
            "accuracy_drop_replay": float(
                metrics["base (stage 1)"]["text_qa"]["accuracy"] - metrics["stage 2, replay"]["text_qa"]["accuracy"]
            ),
        },
        "chance": {"text_qa": chance_text, "audio_label": 1 / len(aliases)},
    }
