"""DeSTA2 (Lu et al., 2024): the LLM writes its own alignment targets from each clip's metadata; only the adapter
trains, so the LLM's text behaviour cannot change.

Stages:

- ``data``: labelled clips (``train.recipes.lalm_data`` sources: ``synthetic`` or a finished ``demo`` run) written
  as clapkit shards whose metadata is all the LLM will know of each clip — its caption, its class name and its
  duration — plus the held-out test listing;
- ``self_label``: the base LLM answers a question about each clip from that metadata (``clapkit lalm self-label``,
  run in-process through ``clapkit.cli.main`` so the recipe takes the user's path); its answer becomes the
  assistant turn of a conversation in which the audio replaces the description. Conversation shards out, a few
  examples in ``examples.txt``, and how often the LLM's targets name the clip's class;
- ``stage2``: DeSTA2's model training (its stage 1 is the dataset construction above) through the train app on
  those conversations, with the app's ``model.stage: 1`` setting: the projector trains, the encoder and the LLM
  stay frozen (the app's stage 2 always trains the LLM, through LoRA or in full);
- ``evaluate``: the model before and after training — label accuracy on the held-out clips ("What sound is
  this?") and the shipped text QA set (``clapkit.lalm.forgetting``) scored against the base's choice
  distribution; with the LLM frozen the two text scores are the same and the KL divergence is 0.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from clapkit.data.inputs import InputRecord
from clapkit.data.writer import WriterConfig, write_shards
from clapkit.evaluate.report import format_table
from clapkit.io import atomic_write_json, atomic_write_text
from clapkit.lalm.config import DEFAULT_LLM
from clapkit.lalm.data import ConversationSample
from clapkit.lalm.evaluate import label_accuracy, normalize_text, predict
from clapkit.lalm.forgetting import choice_scores, load_text_qa, text_qa_metrics
from clapkit.lalm.selflabel import describe_metadata
from train.recipes.base import RecipeContext, stage_config, train_stage
from train.recipes.clap_data import demo_fingerprints
from train.recipes.lalm_data import QUESTION, SOURCES, test_items

__all__ = ["MODELS", "run"]

#: The two models the evaluation compares: the one training starts from, and the trained one.
MODELS = ("base (adapter untrained)", "DeSTA2 (adapter trained)")


def run(ctx: RecipeContext) -> dict[str, Any]:
    """Data, self-labelling, training, evaluation; returns each stage's result and ``table``."""
    stages = ctx.config.get("stages") or {}
    if set(stages) != {"stage2"}:
        raise ValueError(f"desta: stages {sorted(stages)}; expected exactly stage2")
    llm, gguf_file = _stage_llm(ctx, stages["stage2"])
    out: dict[str, Any] = {"data": _data(ctx)}
    out["self_label"] = labelled = _self_label(ctx, out["data"], llm, gguf_file)
    out["stage2"] = train_stage(
        ctx, "stage2", stages["stage2"], app="lalm", paths={"data.stage1_shards": labelled["shards"]}
    )
    evaluation = ctx.config.get("evaluate") or {}
    result = ctx.stage("evaluate", {"evaluate": evaluation}, lambda folder: _evaluate(ctx, out, evaluation, folder))
    ctx.results = result["models"]
    out["evaluate"], out["table"] = result, result["table"]
    atomic_write_json(ctx.out / "results.json", {"recipe": ctx.name, "scale": ctx.scale, **result})
    lines = [f"# {ctx.name} ({ctx.scale})", "", "```", result["table"], "```", "", result["targets_line"], ""]
    atomic_write_text(ctx.out / "results.md", "\n".join(lines))
    return out


def _stage_llm(ctx: RecipeContext, spec: dict[str, Any]) -> tuple[str, str | None]:
    """The LLM the training stage aligns to (its ``model.model.init_args``): DeSTA's targets come from that LLM."""
    if "config" not in spec:
        raise ValueError("recipe stage stage2: give 'config' (a train-app YAML, e.g. configs/lalm/tiny_stage1.yaml)")
    config = stage_config(spec["config"], spec.get("set") or {}, ctx.out / "stage2", {})
    model = config.get("model", {}).get("model", {})
    args = model.get("init_args") or {}
    llm = args.get("llm", DEFAULT_LLM) if str(model.get("class_path", "")).endswith("LalmFromParts") else None
    if not isinstance(llm, str):
        raise ValueError(
            "desta: the LLM that writes the targets is the one being aligned; give stages.stage2 a "
            "train.lalm.LalmFromParts model whose init_args.llm names it (smollm2, a transformers folder, a .gguf)"
        )
    return llm, args.get("gguf_file")


def _data(ctx: RecipeContext) -> dict[str, Any]:
    """The ``data`` stage: the training clips as shards with their text metadata, and the held-out test listing."""
    cfg = ctx.config.get("data") or {}
    source = cfg.get("source")
    if source not in SOURCES:
        raise ValueError(f"data.source {source!r}: expected one of {', '.join(SOURCES)}")

    def run(folder: Path) -> dict[str, Any]:
        train, test, aliases = SOURCES[source](ctx, cfg, folder)
        # What the LLM is shown instead of the audio (the writer adds the duration); "class" is for scoring only.
        records = [
            InputRecord(
                r["audio"],
                {"captions": [r["caption"]], "labels": [r["label"].replace("_", " ")], "class": r["label"]},
            )
            for r in train
        ]
        writer = WriterConfig(sample_rate=int(cfg["sample_rate"]), counterfactual_audio=False)
        manifest = write_shards(records, folder / "clips", writer, source=f"recipe {ctx.name} data", progress=False)
        if manifest.skipped:
            raise RuntimeError(f"{folder / 'clips'}: {manifest.skipped} clips skipped; see report.json")
        listing = atomic_write_text(
            folder / "test.jsonl", "".join(json.dumps({"audio": r["audio"], "label": r["label"]}) + "\n" for r in test)
        )
        return {
            "shards": str(folder / "clips"),
            "test": str(listing),
            "aliases": aliases,
            "clips": manifest.total,
            "test_clips": len(test),
            "classes": len(aliases),
        }

    parts: dict[str, Any] = {"data": cfg, "seed": ctx.config.get("seed")}
    if source == "demo":
        parts["demo"] = demo_fingerprints(cfg)
    return ctx.stage("data", parts, run)


def _self_label(ctx: RecipeContext, data: dict[str, Any], llm: str, gguf_file: str | None) -> dict[str, Any]:
    """The ``self_label`` stage: ``clapkit lalm self-label`` over the data shards with the base LLM."""
    cfg = ctx.config.get("self_label") or {}

    def run(folder: Path) -> dict[str, Any]:
        from clapkit.cli import main as clapkit_main

        args = ["lalm", "self-label", data["shards"], "--out", str(folder / "shards"), "--llm", llm]
        args += ["--batch-size", str(int(cfg.get("batch_size", 8)))]
        args += ["--max-new-tokens", str(int(cfg.get("max_new_tokens", 96)))]
        args += ["--seed", str(int(cfg.get("seed", ctx.config.get("seed", 0))))]
        if gguf_file:
            args += ["--gguf-file", gguf_file]
        if cfg.get("questions"):
            questions = atomic_write_text(folder / "questions.txt", "".join(f"{q}\n" for q in cfg["questions"]))
            args += ["--questions", str(questions)]
        if cfg.get("device"):
            args += ["--device", str(cfg["device"])]
        if not ctx.progress:
            args.append("--quiet")
        code = clapkit_main(args)
        if code:
            raise RuntimeError(f"clapkit {' '.join(args)}: exited with {code} (its error is above)")
        labelled = list(_read_shards(folder / "shards"))
        examples = []
        for meta in labelled[: int(cfg.get("examples", 5))]:
            question, answer = meta["conversation"][0]["content"], meta["conversation"][-1]["content"]
            examples.append(f"{describe_metadata(meta)}\nQ: {question}\nA: {answer}")
        atomic_write_text(folder / "examples.txt", "\n\n".join(examples) + "\n")
        return {
            "shards": str(folder / "shards"),
            "conversations": len(labelled),
            "skipped": data["clips"] - len(labelled),
            "targets": _target_quality(labelled, data["aliases"]),
        }

    return ctx.stage("self_label", {"self_label": cfg, "llm": llm, "gguf_file": gguf_file}, run)


def _read_shards(folder: Path) -> Iterator[dict[str, Any]]:
    """Each sample's metadata (``<key>.json``) in the shards of ``folder``, in order."""
    import webdataset as wds

    urls = [str(p) for p in sorted(folder.glob("*.tar"))]
    for sample in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()):
        yield json.loads(sample["json"])


def _target_quality(labelled: list[dict[str, Any]], aliases: dict[str, list[str]]) -> dict[str, float]:
    """How well the LLM's targets name each clip's class: ``label_accuracy`` of the targets (the class named and no
    other, as the model's answers are scored) and ``mentions_class`` (any name of the class in the target)."""
    answers = [m["conversation"][-1]["content"] for m in labelled]
    classes = [m["class"] for m in labelled]
    scored = label_accuracy(answers, classes, aliases)

    def mentions(answer: str, label: str) -> bool:
        text = f" {normalize_text(answer)} "
        return any(f" {normalize_text(n)} " in text for n in (label.replace("_", " "), *aliases[label]))

    hits = [mentions(a, c) for a, c in zip(answers, classes)]
    return {
        "names_class": scored["accuracy"],
        "unparsed": scored["unparsed"],
        "mentions_class": sum(hits) / len(hits) if hits else 0.0,
        "n": scored["n"],
    }


def _load(name: str, stage2: dict[str, Any]) -> Any:
    """``MODELS[0]``: the model training started from, rebuilt from the stage's config; ``MODELS[1]``: the trained
    one."""
    import clapkit.lalm
    from train.lalm import build_lalm

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # peft's deprecation notices on load
        if name == MODELS[1]:
            return clapkit.lalm.load(stage2["model"], merge_lora=True)
        spec = yaml.safe_load(Path(stage2["config"]).read_text(encoding="utf-8"))["model"]["model"]
        if str(spec["class_path"]).endswith("LalmFromAdapter"):
            return clapkit.lalm.load(spec["init_args"]["directory"], merge_lora=True)
        return build_lalm(**spec.get("init_args", {})).eval()


def _changed(base: torch.nn.Module, tuned: torch.nn.Module) -> tuple[int, int]:
    """(tensors of ``tuned`` that differ from ``base``'s, tensors compared)."""
    ref = base.state_dict()
    now = tuned.state_dict()
    if ref.keys() != now.keys():
        return len(ref.keys() ^ now.keys()), len(ref.keys() | now.keys())
    return sum(not torch.equal(ref[k], now[k]) for k in now), len(now)


def _evaluate(ctx: RecipeContext, out: dict[str, Any], cfg: dict[str, Any], folder: Path) -> dict[str, Any]:
    items = load_text_qa(cfg.get("text_qa"), split="eval")
    if cfg.get("text_qa_limit"):  # evenly spaced, so every topic keeps its share
        step = len(items) / int(cfg["text_qa_limit"])
        items = [items[int(i * step)] for i in range(min(len(items), int(cfg["text_qa_limit"])))]
    tests = test_items(out["data"]["test"], cfg.get("test_limit"))
    aliases = out["data"]["aliases"]
    batch_size = int(cfg.get("batch_size", 16))
    metrics: dict[str, dict[str, Any]] = {}
    reference, base = None, None
    for name, tag in zip(MODELS, ("base", "trained")):
        model = _load(name, out["stage2"])
        with torch.inference_mode():
            scores = choice_scores(model, items, batch_size=batch_size, progress=ctx.progress)
            reference = scores if reference is None else reference
            text = text_qa_metrics(scores, items, reference=reference)
            samples = [
                ConversationSample.from_sources(
                    f"t{i}",
                    [{"role": "user", "content": QUESTION}],
                    [t["audio"]],
                    model.sample_rate,
                    {"kind": "label", "answer": t["label"]},
                )
                for i, t in enumerate(tests)
            ]
            records = predict(model, samples, batch_size=batch_size, max_new_tokens=int(cfg.get("max_new_tokens", 8)))
        audio = label_accuracy([r["prediction"] for r in records], [t["label"] for t in tests], aliases)
        metrics[name] = {"text_qa": text, "audio_label": audio, "examples": [r["prediction"] for r in records[:3]]}
        if base is None:
            base = model
        else:  # what training changed: the projector, and nothing of the LLM when it is frozen
            llm, llm_total = _changed(base.llm, model.llm)
            projector, _ = _changed(base.projector, model.projector)
            metrics[name]["changed"] = {"llm_tensors": llm, "llm_total": llm_total, "projector_tensors": projector}
        ctx.log(
            f"        {name}: text QA {100 * text['accuracy']:.1f} % (KL to base {text['kl_to_reference']:.4f}), "
            f"audio label {100 * audio['accuracy']:.1f} %"
        )
        atomic_write_text(folder / f"predictions_{tag}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    del base, model
    targets = out["self_label"]["targets"]
    chance_text = metrics[MODELS[0]]["text_qa"]["chance"]
    rows = [
        (
            name,
            f"{100 * m['text_qa']['accuracy']:.1f}",
            f"{m['text_qa']['kl_to_reference']:.4f}",
            f"{100 * m['text_qa']['agreement']:.1f}",
            f"{100 * m['audio_label']['accuracy']:.1f}",
            f"{100 * m['audio_label']['unparsed']:.1f}",
        )
        for name, m in metrics.items()
    ]
    header = (
        "model",
        f"text QA acc % (chance {100 * chance_text:.0f})",
        "KL to base",
        "agrees with base %",
        f"audio label acc % (chance {100 / len(aliases):.1f})",
        "unparsed %",
    )
    changed = metrics[MODELS[1]]["changed"]
    targets_line = (
        f"Self-labelled targets ({targets['n']}): name the clip's class {100 * targets['names_class']:.1f} %, "
        f"mention it {100 * targets['mentions_class']:.1f} %. Training changed {changed['projector_tensors']} "
        f"projector tensors and {changed['llm_tensors']} of {changed['llm_total']} LLM tensors."
    )
    return {
        "models": metrics,
        "table": format_table(rows, header=header),
        "targets": targets,
        "targets_line": targets_line,
        "text_items": len(items),
        "test_clips": len(tests),
        "chance": {"text_qa": chance_text, "audio_label": 1 / len(aliases)},
    }
