"""LLaSO (Sun et al., 2025): frozen encoder → MLP projector → LLM, two stages, three modality layouts, abstention.

Stages: ``data`` → ``stage1`` (alignment: the projector only, on "Describe the sound." conversations) →
``stage2`` (instruction tuning: projector and LLM, on the three layouts) → ``evaluate`` (both models, per layout).

The data stage writes LLaSO-style JSON (LLaVA conversation format, ``clapkit.lalm.llaso``) from labelled clips and
instructions spoken by espeak-ng (``clapkit.tts``), then converts it to shards with ``read_llaso`` — the same path a
user's LLaSO data takes. Tasks, each with an answerable and an unanswerable form (the right reply to the second
declines, and ``is_abstention`` must recognise it):

- ``text_audio`` (text instruction + audio input): "What sound is this?" + a clip → its class; "What word does the
  speaker say?" + a clip without speech → decline;
- ``audio_text`` (spoken instruction + text input): spoken "What is the capital of the country written below?" +
  a country → its capital, or + a word that is no country → decline; spoken "What is the opposite of the word
  written below?" + a word → its opposite (countries and words from the shipped text QA set, held out by item);
- ``pure_audio`` (spoken instruction clip + audio input clip): spoken "What sound do you hear next?" + a clip → its
  class; spoken "What word does the speaker say next?" + a clip without speech → decline.

Scores per layout: accuracy on the answerable questions (the reference's words named in the answer; classes by
their names as in ``label_accuracy``), and the abstention rate on answerable (false refusals) and unanswerable
(correct refusals) ones.
"""

from __future__ import annotations

import json
import random
import re
import warnings
from pathlib import Path
from typing import Any

import soundfile as sf

from clapkit.data.writer import WriterConfig, write_shards
from clapkit.evaluate.report import format_table
from clapkit.io import atomic_write_json, atomic_write_text
from clapkit.lalm.data import ConversationSample
from clapkit.lalm.evaluate import extract_label, is_abstention, normalize_text, predict
from clapkit.lalm.forgetting import load_text_qa
from clapkit.lalm.llaso import read_llaso
from clapkit.tts import Synthesizer, Utterance
from train.recipes.base import RecipeContext, train_stage
from train.recipes.clap_data import demo_fingerprints
from train.recipes.lalm_data import DESCRIBE, SOURCES

__all__ = ["INSTRUCTIONS", "LAYOUT_NAMES", "run"]

LAYOUT_NAMES = ("text_audio", "audio_text", "pure_audio")
#: Spoken instructions (rendered by espeak-ng) and the written ones of the text_audio layout.
INSTRUCTIONS = {
    "capital": "What is the capital of the country written below?",
    "opposite": "What is the opposite of the word written below?",
    "sound_next": "What sound do you hear next?",
    "word_next": "What word does the speaker say next?",
}
SOUND_QUESTION = "What sound is this?"
WORD_QUESTION = "What word does the speaker say?"
DECLINE = {
    "word": "I cannot tell: I hear no speech in this audio.",
    "capital": "I cannot tell: that is not a country.",
}
_CAPITAL = re.compile(r"^What is the capital of (.+)\?$")
_OPPOSITE = re.compile(r'^What is the opposite of "(.+)"\?$')


def _text_tasks(seed: int) -> dict[str, list[dict[str, str]]]:
    """(country, capital) and (word, opposite) pairs from the shipped text QA set, split 70/30 by item."""
    pairs: dict[str, list[dict[str, str]]] = {"capital": [], "opposite": []}
    for item in load_text_qa():
        for task, pattern in (("capital", _CAPITAL), ("opposite", _OPPOSITE)):
            m = pattern.match(item["question"])
            if m:
                pairs[task].append({"input": m.group(1), "answer": item["answer"]})
    out: dict[str, list[dict[str, str]]] = {}
    rng = random.Random(seed)
    for task, items in pairs.items():
        rng.shuffle(items)
        cut = int(0.7 * len(items))
        out[f"{task}_train"], out[f"{task}_test"] = items[:cut], items[cut:]
    return out


def _speak(folder: Path, voices: list[str], sample_rate: int) -> dict[str, list[str]]:
    """Each spoken instruction by each voice, as WAV files; instruction name → paths."""
    synth = Synthesizer("espeak-ng")
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[str]] = {}
    for name in ("capital", "opposite", "sound_next", "word_next"):
        out[name] = []
        for voice in voices:
            wave = synth.render(Utterance(INSTRUCTIONS[name], voice), sample_rate)
            path = folder / f"{name}_{voice}.wav"
            sf.write(path, wave.numpy(), sample_rate)
            out[name].append(str(path))
    return out


def _entry(key: str, layout: str, user: str, answer: str, audio: list[str], task: str, answerable: bool) -> dict:
    return {
        "id": key,
        "conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": answer}],
        "audio": audio,
        "layout": layout,
        "task": task,
        "answerable": answerable,
    }


def _entries(
    clips: list[dict[str, Any]],
    aliases: dict[str, list[str]],
    speech: dict[str, list[str]],
    text: dict[str, list[dict[str, str]]],
    split: str,
    cfg: dict[str, Any],
    seed: int,
) -> list[dict[str, Any]]:
    """LLaSO-style entries of one split, in all three layouts."""
    rng = random.Random(f"{seed}-{split}")
    speechless = [c for c in clips if not c.get("speech")]
    out = []

    def name(label: str) -> str:
        first = aliases[label][0]
        return first[:1].upper() + first[1:] + "."

    def voice(task: str) -> str:
        return rng.choice(speech[task])

    unanswerable = float(cfg.get("unanswerable_fraction", 0.25))
    for i, c in enumerate(clips):  # text instruction + audio input
        out.append(
            _entry(
                f"{split}-ta-{i}",
                "text_audio",
                f"{SOUND_QUESTION}\n<audio>",
                name(c["label"]),
                [c["audio"]],
                "label",
                True,
            )
        )
    for i, c in enumerate(rng.sample(speechless, min(len(speechless), int(unanswerable * len(clips))))):
        out.append(
            _entry(
                f"{split}-ta-u{i}",
                "text_audio",
                f"{WORD_QUESTION}\n<audio>",
                DECLINE["word"],
                [c["audio"]],
                "word",
                False,
            )
        )
    repeats = int(cfg.get("text_repeats", 1))
    for task in ("capital", "opposite"):  # spoken instruction + text input
        for r in range(repeats):
            for i, t in enumerate(text[f"{task}_{split}"]):
                out.append(
                    _entry(
                        f"{split}-at-{task}-{r}-{i}",
                        "audio_text",
                        f"<audio>\n{t['input']}",
                        f"{t['answer']}.",
                        [voice(task)],
                        task,
                        True,
                    )
                )
    words = [t["input"] for t in text[f"opposite_{split}"]]
    for r in range(repeats):
        for i, w in enumerate(words[: max(1, len(text[f"capital_{split}"]) // 3)]):
            out.append(
                _entry(
                    f"{split}-at-u-{r}-{i}",
                    "audio_text",
                    f"<audio>\n{w}",
                    DECLINE["capital"],
                    [voice("capital")],
                    "capital",
                    False,
                )
            )
    pure = rng.sample(clips, int(float(cfg.get("pure_audio_fraction", 0.5)) * len(clips)))
    for i, c in enumerate(pure):  # spoken instruction + audio input: two clips
        out.append(
            _entry(
                f"{split}-aa-{i}",
                "pure_audio",
                "<audio>\n<audio>",
                name(c["label"]),
                [voice("sound_next"), c["audio"]],
                "label",
                True,
            )
        )
    for i, c in enumerate(rng.sample(speechless, min(len(speechless), int(unanswerable * len(pure))))):
        out.append(
            _entry(
                f"{split}-aa-u{i}",
                "pure_audio",
                "<audio>\n<audio>",
                DECLINE["word"],
                [voice("word_next"), c["audio"]],
                "word",
                False,
            )
        )
    return out


def _data(ctx: RecipeContext) -> dict[str, Any]:
    cfg = ctx.config.get("data") or {}
    source = cfg.get("source")
    if source not in SOURCES:
        raise ValueError(f"data.source {source!r}: expected one of {', '.join(SOURCES)}")
    seed = int(ctx.config.get("seed", 0))

    def run(folder: Path) -> dict[str, Any]:
        train, test, aliases = SOURCES[source](ctx, cfg, folder)
        speech_labels = set(cfg.get("speech_labels") or [])
        for c in train + test:
            c["speech"] = c["label"] in speech_labels or c["label"].startswith("say_")
        rate = int(cfg["sample_rate"])
        speech = _speak(folder / "instructions", list(cfg.get("voices", ["en-us", "en-gb"])), rate)
        text = _text_tasks(seed)
        files = {}
        for split, clips in (("train", train), ("test", test)):
            entries = _entries(clips, aliases, speech, text, split, cfg, seed)
            files[split] = atomic_write_text(folder / f"llaso_{split}.json", json.dumps(entries, indent=1))
        align = [
            {
                "id": f"align-{i}",
                "conversations": [
                    {"from": "human", "value": DESCRIBE.replace("<Audio>", "<audio>")},
                    {"from": "gpt", "value": c["caption"]},
                ],
                "audio": c["audio"],
                "layout": "text_audio",
                "task": "describe",
            }
            for i, c in enumerate(train)
        ]
        files["align"] = atomic_write_text(folder / "llaso_align.json", json.dumps(align, indent=1))
        writer = WriterConfig(sample_rate=rate, require_captions=False, counterfactual_audio=False)
        reports = {}
        for name in ("align", "train"):
            records, report = read_llaso(files[name])
            if report.skipped:
                raise RuntimeError(f"{files[name]}: {report.to_dict()['examples']}")
            write_shards(records, folder / name, writer, source=str(files[name]), progress=False)
            reports[name] = report.to_dict()
        _, report = read_llaso(files["test"])
        reports["test"] = report.to_dict()
        return {
            "align_shards": str(folder / "align"),
            "instruct_shards": str(folder / "train"),
            "test": str(files["test"]),
            "aliases": aliases,
            "reports": reports,
        }

    parts: dict[str, Any] = {"data": cfg, "seed": seed, "names": 2}  # clips keyed by class id (lalm_data._demo)
    if source == "demo":
        parts["demo"] = demo_fingerprints(cfg)
    return ctx.stage("data", parts, run)


def run(ctx: RecipeContext) -> dict[str, Any]:
    """Data, stage 1, stage 2, evaluation; returns each stage's result and ``table``."""
    stages = ctx.config.get("stages") or {}
    if set(stages) != {"stage1", "stage2"}:
        raise ValueError(f"llaso: stages {sorted(stages)}; expected exactly stage1, stage2")
    data = _data(ctx)
    out: dict[str, Any] = {"data": data}
    out["stage1"] = stage1 = train_stage(
        ctx, "stage1", stages["stage1"], app="lalm", paths={"data.stage1_shards": data["align_shards"]}
    )
    out["stage2"] = train_stage(
        ctx,
        "stage2",
        stages["stage2"],
        app="lalm",
        paths={
            "model.model.init_args.directory": stage1["model"],
            "data.stage2_shards": data["instruct_shards"],
            "data.stage1_shards": data["align_shards"],
        },
    )
    evaluation = ctx.config.get("evaluate") or {}
    result = ctx.stage("evaluate", {"evaluate": evaluation}, lambda folder: _evaluate(ctx, out, evaluation, folder))
    out["evaluate"], out["table"] = result, result["table"]
    atomic_write_json(ctx.out / "results.json", {"recipe": ctx.name, "scale": ctx.scale, **result})
    atomic_write_text(ctx.out / "results.md", f"# {ctx.name} ({ctx.scale})\n\n```\n{result['table']}\n```\n")
    return out


def _correct(prediction: str, answer: str, task: str, aliases: dict[str, list[str]]) -> bool:
    if task == "label":
        label = next((k for k, names in aliases.items() if _named(answer, names)), None)
        return label is not None and extract_label(prediction, aliases) == label
    words = normalize_text(answer).split()
    return bool(words) and all(w in normalize_text(prediction).split() for w in words)


def _named(answer: str, names: list[str]) -> bool:
    return normalize_text(answer) in {normalize_text(n) for n in names}


def _evaluate(ctx: RecipeContext, out: dict[str, Any], cfg: dict[str, Any], folder: Path) -> dict[str, Any]:
    import clapkit.lalm

    records, _ = read_llaso(out["data"]["test"])
    aliases = out["data"]["aliases"]
    limit = cfg.get("limit_per_layout")
    chosen: list[Any] = []
    for layout in LAYOUT_NAMES:
        of_layout = [r for r in records if r.fields["layout"] == layout]
        for answerable in (True, False):
            group = [r for r in of_layout if r.fields["answerable"] is answerable]
            chosen += group[: int(limit)] if limit else group
    metrics: dict[str, Any] = {}
    rows = []
    for name in ("stage1", "stage2"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            model = clapkit.lalm.load(out[name]["model"], merge_lora=True)
        samples = []
        for r in chosen:
            messages = r.fields["conversation"]
            clips = [r.audio, *r.fields.get("extra_audio", [])]
            meta = {"kind": "open", "answer": messages[-1]["content"], "layout": r.fields["layout"]}
            samples.append(
                ConversationSample.from_sources(r.fields["id"], messages[:-1], clips, model.sample_rate, meta)
            )
        preds = predict(
            model, samples, batch_size=int(cfg.get("batch_size", 16)), max_new_tokens=int(cfg.get("max_new_tokens", 16))
        )
        atomic_write_text(folder / f"predictions_{name}.jsonl", "".join(json.dumps(p) + "\n" for p in preds))
        per_layout: dict[str, Any] = {}
        for layout in LAYOUT_NAMES:
            pairs = [(r, p) for r, p in zip(chosen, preds) if r.fields["layout"] == layout]
            yes = [(r, p) for r, p in pairs if r.fields["answerable"]]
            no = [(r, p) for r, p in pairs if not r.fields["answerable"]]
            per_layout[layout] = {
                "answerable": len(yes),
                "unanswerable": len(no),
                "accuracy": _mean(_correct(p["prediction"], p["answer"], r.fields["task"], aliases) for r, p in yes),
                "abstain_answerable": _mean(is_abstention(p["prediction"]) for _, p in yes),
                "abstain_unanswerable": _mean(is_abstention(p["prediction"]) for _, p in no),
                "examples": [p["prediction"] for _, p in pairs[:2]],
            }
            m = per_layout[layout]
            rows.append(
                (
                    name,
                    layout,
                    f"{m['answerable']}/{m['unanswerable']}",
                    _pct(m["accuracy"]),
                    _pct(m["abstain_answerable"]),
                    _pct(m["abstain_unanswerable"]),
                )
            )
            ctx.log(
                f"        {name} {layout}: accuracy {_pct(m['accuracy'])} %, abstains on answerable "
                f"{_pct(m['abstain_answerable'])} % / unanswerable {_pct(m['abstain_unanswerable'])} %"
            )
        metrics[name] = per_layout
        del model
    header = (
        "model",
        "layout",
        "questions (answerable/not)",
        "accuracy %",
        "abstains, answerable %",
        "abstains, unanswerable %",
    )
    return {"models": metrics, "table": format_table(rows, header=header), "questions": len(chosen)}


def _mean(values: Any) -> float | None:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"
