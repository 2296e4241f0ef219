"""The data stage of the LALM recipes: labelled clips made into conversation shards.

- stage 1 (alignment): ``<Audio> Describe the sound.`` → the clip's caption;
- stage 2 (instruction): ``<Audio> What sound is this?`` → the class, named as captions name it ("A dog.");
- a held-out test listing (audio, label) scored by ``label_accuracy`` with each class's names as aliases.

Clips come from ``data.source``: ``synthetic`` (``--scale tiny``: the synthetic classes of
``train.recipes.clap_data``) or ``demo`` (``--scale demo``: a finished demo run's debian-sounds clips, its
captions, and the phrasings of configs/demo.yaml).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from clapkit.compose.phrases import phrase_for
from clapkit.data.inputs import InputRecord
from clapkit.data.writer import WriterConfig, write_shards
from clapkit.io import atomic_write_text
from train.recipes.base import RecipeContext
from train.recipes.clap_data import demo_fingerprints, demo_markers, read_records, synthesize_clips

__all__ = ["DESCRIBE", "QUESTION", "class_answer", "lalm_data", "test_items", "write_conversations"]

DESCRIBE = "<Audio>\nDescribe the sound."
QUESTION = "<Audio>\nWhat sound is this? Answer in a few words."


def class_answer(names: list[str]) -> str:
    """The answer naming a class by its first name: ``["a dog", …]`` → "A dog."."""
    first = names[0]
    return first[:1].upper() + first[1:] + "."


def _synthetic(ctx: RecipeContext, cfg: Mapping[str, Any], folder: Path) -> tuple[list, list, dict]:
    seed, rate = int(ctx.config.get("seed", 0)), int(cfg["sample_rate"])
    train = synthesize_clips(folder / "clips" / "train", int(cfg["train_per_class"]), rate, seed)
    test = synthesize_clips(folder / "clips" / "test", int(cfg["test_per_class"]), rate, seed + 1)
    aliases = {}
    for rec in train + test:
        phrase = phrase_for(rec["label"])
        # The phrase's subject names the class unless it is generic ("someone" knocks): then "a knock".
        subject = phrase.subject if rec["label"] in phrase.subject else f"a {rec['label']}"
        aliases[rec["label"]] = [subject, rec["label"]]
        rec["caption"] = f"{phrase.subject[:1].upper()}{phrase.subject[1:]} {phrase.verb}."
    return train, test, aliases


def _demo(ctx: RecipeContext, cfg: Mapping[str, Any], folder: Path) -> tuple[list, list, dict]:
    run = Path(cfg.get("run_dir") or "runs/demo").resolve()
    demo_markers(run)
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    given = (config.get("data") or {}).get("dataset_dir")
    dataset = Path(given).resolve() if given else run / "data" / config["data"]["dataset"]
    phrases = config.get("phrases") or {}

    display: dict[str, str] = {}

    def rows(split: str) -> list[dict[str, Any]]:
        out = []
        for r in read_records(dataset / f"{split}.jsonl"):
            label = r.get("class") or r["labels"][0]  # the class id; the phrasings are keyed by it
            display.setdefault(label, r["labels"][0])
            out.append({"audio": str(dataset / r["audio"]), "label": label, "caption": r["captions"][0]})
        return out

    train, test = rows("train"), rows("test")
    aliases = {}
    for label in sorted(display):
        # The demo's phrasings of the class ("a dog"), then its display name ("dog barking") and its id.
        names = [p[0] for p in phrases.get(label, [])] + [display[label], label.replace("_", " ")]
        aliases[label] = list(dict.fromkeys(names))
    return train, test, aliases


SOURCES = {"synthetic": _synthetic, "demo": _demo}


def lalm_data(ctx: RecipeContext) -> dict[str, Any]:
    """The data stage (``data`` in the run folder): stage-1 and stage-2 conversation shards and the test listing."""
    cfg = ctx.config.get("data") or {}
    source = cfg.get("source")
    if source not in SOURCES:
        raise ValueError(f"data.source {source!r}: expected one of {', '.join(SOURCES)}")

    def run(folder: Path) -> dict[str, Any]:
        train, test, aliases = SOURCES[source](ctx, cfg, folder)
        stage1 = [
            InputRecord(r["audio"], {"conversation": _turns(DESCRIBE, r["caption"]), "labels": [r["label"]]})
            for r in train
        ]
        stage2 = [
            InputRecord(
                r["audio"],
                {"conversation": _turns(QUESTION, class_answer(aliases[r["label"]])), "labels": [r["label"]]},
            )
            for r in train
        ]
        made = write_conversations(ctx, folder, {"stage1": stage1, "stage2": stage2}, int(cfg["sample_rate"]))
        listing = atomic_write_text(
            folder / "test.jsonl", "".join(json.dumps({"audio": r["audio"], "label": r["label"]}) + "\n" for r in test)
        )
        return {
            "stage1_shards": str(folder / "stage1"),
            "stage2_shards": str(folder / "stage2"),
            "test": str(listing),
            "aliases": aliases,
            "conversations": made,
            "test_clips": len(test),
            "classes": len(aliases),
        }

    # "names": clips keyed by class id and named by the demo's phrasings (data made before that is redone).
    parts: dict[str, Any] = {"data": cfg, "seed": ctx.config.get("seed"), "names": 2}
    if source == "demo":
        parts["demo"] = demo_fingerprints(cfg)
    return ctx.stage("data", parts, run)


def write_conversations(
    ctx: RecipeContext, folder: Path, sets: Mapping[str, list[InputRecord]], sample_rate: int
) -> dict[str, int]:
    """Each named set of conversation records as shards in ``folder/<name>`` (audio stored at ``sample_rate``);
    the number written per set. A record the writer skips (unreadable audio) stops the stage, naming the report."""
    writer = WriterConfig(sample_rate=sample_rate, require_captions=False, counterfactual_audio=False)
    made = {}
    for name, records in sets.items():
        manifest = write_shards(records, folder / name, writer, source=f"recipe {ctx.name} {name}", progress=False)
        if manifest.skipped:
            raise RuntimeError(f"{folder / name}: {manifest.skipped} conversations skipped; see its report.json")
        made[name] = manifest.total
    return made


def _turns(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def test_items(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The held-out listing written by ``lalm_data``: ``{"audio", "label"}`` per clip."""
    items = read_records(Path(path))
    return items[:limit] if limit else items
