"""SALMONN (Tang et al., 2024): frozen encoder → window-level Q-Former → LLM with LoRA; speech and sounds.

Stages: ``data`` → ``stage1`` (alignment, in place of SALMONN's pre-training: the Q-Former alone — SALMONN trains
LoRA there too — on "Transcribe the speech." → the words and "Describe the sound." → the clip's caption) →
``stage2`` (instruction tuning: Q-Former and LoRA, on both tasks) → ``evaluate`` (both models, both tasks: the
results table).

The projector is the ``qformer`` of ``clapkit.lalm.projectors``: ``num_queries`` learned queries attend to each
window of ``window`` encoder frames, so the LLM gets a few tokens per window in time order — SALMONN's 1 query per
0.33 s. Tasks:

- **speech (ASR)**: sentences over a small closed vocabulary (digits and common words), spoken by espeak-ng
  (``clapkit.tts``) in several voices and at several speeds; the test sentences are held out (none is a training
  sentence, every word of them is heard in training). Scored by word and character error rate
  (``clapkit.lalm.evaluate.wer`` / ``cer``, on normalised text) against the sentences that were spoken.
- **sound QA**: labelled clips of ``train.recipes.lalm_data``'s sources (``synthetic`` at the tiny scale, a
  finished demo run's clips with ``demo``), "What sound is this?" → the class, scored by ``label_accuracy``.
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import soundfile as sf

from clapkit.data.inputs import InputRecord
from clapkit.evaluate.report import format_table
from clapkit.io import atomic_write_json, atomic_write_text
from clapkit.lalm.data import ConversationSample
from clapkit.lalm.evaluate import cer, extract_label, label_accuracy, predict, wer
from clapkit.tts import Synthesizer, plan_utterances
from train.recipes.base import RecipeContext, train_stage
from train.recipes.clap_data import demo_fingerprints, read_records
from train.recipes.lalm_data import DESCRIBE, QUESTION, SOURCES, write_conversations

__all__ = ["MODELS", "TRANSCRIBE", "VOCABULARY", "make_sentences", "run"]

TRANSCRIBE = "<Audio>\nTranscribe the speech."
#: The spoken vocabulary (``data.speech.vocabulary`` replaces it): digits and short common words.
VOCABULARY = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
    "red", "blue", "green", "cat", "dog", "house", "the", "big", "small", "open",
)  # fmt: skip
#: The keys ``data.speech`` must give.
SPEECH_KEYS = ("voices", "rates", "renders", "train_sentences", "test_sentences", "words")
#: The evaluated models: stage name → what it trained.
MODELS = {"stage1": "Q-Former", "stage2": "Q-Former + LoRA"}


def make_sentences(
    vocabulary: Sequence[str], train: int, test: int, words: Sequence[int], seed: int
) -> tuple[list[str], list[str]]:
    """``train`` distinct sentences of ``words[0]``–``words[1]`` words drawn from ``vocabulary``, and ``test``
    held-out ones: none is a training sentence, and every word of them occurs in a training sentence.

    Raises:
        ValueError: the vocabulary and lengths allow too few distinct sentences.
    """
    low, high = int(words[0]), int(words[1])
    if not vocabulary or not 1 <= low <= high:
        raise ValueError(f"data.speech: needs a vocabulary and 1 ≤ words[0] ≤ words[1], got {len(vocabulary)}, {words}")
    rng = random.Random(seed)

    def draw(pool: Sequence[str], count: int, taken: set[str]) -> list[str]:
        out: list[str] = []
        for _ in range(200 * count):
            if len(out) == count:
                break
            sentence = " ".join(rng.choice(pool) for _ in range(rng.randint(low, high)))
            if sentence not in taken:
                taken.add(sentence)
                out.append(sentence)
        if len(out) < count:
            raise ValueError(
                f"data.speech: found only {len(out)} of {count} distinct sentences of {low}-{high} words over "
                f"{len(pool)} words; give a larger vocabulary or longer sentences, or ask for fewer"
            )
        return out

    taken: set[str] = set()
    train_sentences = draw(list(vocabulary), train, taken)
    heard = sorted({w for s in train_sentences for w in s.split()})
    return train_sentences, draw(heard, test, taken)


def _speak(
    synth: Synthesizer, sentences: list[str], cfg: Mapping[str, Any], rate: int, folder: Path
) -> list[dict[str, Any]]:
    """Each sentence rendered ``renders`` times as WAV files: the voices take turns (sentence ``i`` starts with
    voice ``i``, so fewer renders than voices still hear every voice), each rendering at a speed of ``rates``."""
    folder.mkdir(parents=True, exist_ok=True)
    voices, speeds = list(cfg["voices"]), tuple(float(r) for r in cfg["rates"])
    out = []
    for i, sentence in enumerate(sentences):
        turn = tuple(voices[i % len(voices) :] + voices[: i % len(voices)])
        for j, utt in enumerate(plan_utterances(sentence, turn, speeds, max_renders=int(cfg["renders"]))):
            wave = synth.render(utt, rate).numpy()
            path = folder / f"{i:04d}_{j}.wav"
            sf.write(path, wave, rate)
            seconds = len(wave) / rate
            out.append({"audio": str(path), "text": sentence, "voice": utt.voice, "rate": utt.rate, "seconds": seconds})
    return out


def _spoken(sentence: str) -> str:
    """The transcription the model learns to write: the words as a sentence ("Seven red cat.")."""
    return sentence[:1].upper() + sentence[1:] + "."


def _turns(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _data(ctx: RecipeContext) -> dict[str, Any]:
    """The data stage: stage-1 and stage-2 conversation shards, and the held-out speech and sound listings."""
    cfg = ctx.config.get("data") or {}
    source = cfg.get("source")
    if source not in SOURCES:
        raise ValueError(f"data.source {source!r}: expected one of {', '.join(SOURCES)}")
    speech = cfg.get("speech") or {}
    missing = [k for k in SPEECH_KEYS if k not in speech]
    if missing:
        raise ValueError(f"data.speech: give {', '.join(missing)} (see configs/recipes/salmonn/tiny.yaml)")
    seed, rate = int(ctx.config.get("seed", 0)), int(cfg["sample_rate"])
    synth = Synthesizer("espeak-ng")

    def run(folder: Path) -> dict[str, Any]:
        sounds, sound_test, aliases = SOURCES[source](ctx, cfg, folder)
        vocabulary = list(speech.get("vocabulary") or VOCABULARY)
        train_text, test_text = make_sentences(
            vocabulary, int(speech["train_sentences"]), int(speech["test_sentences"]), speech["words"], seed
        )
        spoken = _speak(synth, train_text, speech, rate, folder / "speech" / "train")
        spoken_test = _speak(synth, test_text, speech, rate, folder / "speech" / "test")

        def record(audio: str, question: str, answer: str, task: str, labels: list[str]) -> InputRecord:
            return InputRecord(audio, {"conversation": _turns(question, answer), "task": task, "labels": labels})

        def name(label: str) -> str:
            first = aliases[label][0]
            return first[:1].upper() + first[1:] + "."

        asr = [record(s["audio"], TRANSCRIBE, _spoken(s["text"]), "asr", []) for s in spoken]
        stages = {
            "stage1": asr + [record(r["audio"], DESCRIBE, r["caption"], "caption", [r["label"]]) for r in sounds],
            "stage2": asr + [record(r["audio"], QUESTION, name(r["label"]), "sound", [r["label"]]) for r in sounds],
        }
        made = write_conversations(ctx, folder, stages, rate)
        lines = {
            "speech_test": "".join(json.dumps(s) + "\n" for s in spoken_test),
            "sound_test": "".join(json.dumps({"audio": r["audio"], "label": r["label"]}) + "\n" for r in sound_test),
        }
        listings = {key: str(atomic_write_text(folder / f"{key}.jsonl", text)) for key, text in lines.items()}
        return {
            "stage1_shards": str(folder / "stage1"),
            "stage2_shards": str(folder / "stage2"),
            **listings,
            "aliases": aliases,
            "conversations": made,
            "speech": {
                "vocabulary": vocabulary,
                "train_sentences": train_text,
                "test_sentences": test_text,
                "train_clips": len(spoken),
                "test_clips": len(spoken_test),
                "seconds": sum(s["seconds"] for s in spoken + spoken_test),
            },
            "sound": {"train_clips": len(sounds), "test_clips": len(sound_test), "classes": len(aliases)},
        }

    parts: dict[str, Any] = {"data": cfg, "seed": seed, "synthesizer": synth.version()}
    if source == "demo":
        parts["demo"] = demo_fingerprints(cfg)
    return ctx.stage("data", parts, run)


def run(ctx: RecipeContext) -> dict[str, Any]:
    """Data, stage 1, stage 2, evaluation; returns each stage's result and ``table``."""
    stages = ctx.config.get("stages") or {}
    if set(stages) != set(MODELS):
        raise ValueError(f"salmonn: stages {sorted(stages)}; expected exactly {', '.join(MODELS)}")
    data = _data(ctx)
    out: dict[str, Any] = {"data": data}
    out["stage1"] = stage1 = train_stage(
        ctx, "stage1", stages["stage1"], app="lalm", paths={"data.stage1_shards": data["stage1_shards"]}
    )
    out["stage2"] = train_stage(
        ctx,
        "stage2",
        stages["stage2"],
        app="lalm",
        paths={
            "model.model.init_args.directory": stage1["model"],
            "data.stage2_shards": data["stage2_shards"],
            "data.stage1_shards": data["stage1_shards"],  # replayed when the stage sets data.replay_ratio
        },
    )
    evaluation = ctx.config.get("evaluate") or {}
    result = ctx.stage("evaluate", {"evaluate": evaluation}, lambda folder: _evaluate(ctx, out, evaluation, folder))
    out["evaluate"], out["table"] = result, result["table"]
    summary = {"recipe": ctx.name, "scale": ctx.scale, **result, "timings": ctx.runner.timings}
    atomic_write_json(ctx.out / "results.json", summary)
    atomic_write_text(ctx.out / "results.md", f"# {ctx.name} ({ctx.scale})\n\n```\n{result['table']}\n```\n")
    return out


def _load(path: str):
    import clapkit.lalm

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # peft's deprecation notices on load
        return clapkit.lalm.load(path, merge_lora=True)


def _answers(model: Any, question: str, clips: list[dict[str, Any]], batch_size: int, max_new_tokens: int) -> list[str]:
    """The model's replies to ``question`` about each clip (``{"audio": path, …}``), in order."""
    messages = [{"role": "user", "content": question}]
    samples = [
        ConversationSample.from_sources(f"clip-{i}", messages, [c["audio"]], model.sample_rate)
        for i, c in enumerate(clips)
    ]
    return [r["prediction"] for r in predict(model, samples, batch_size=batch_size, max_new_tokens=max_new_tokens)]


def _evaluate(ctx: RecipeContext, out: dict[str, Any], cfg: dict[str, Any], folder: Path) -> dict[str, Any]:
    speech = read_records(Path(out["data"]["speech_test"]))[: cfg.get("speech_limit")]
    sounds = read_records(Path(out["data"]["sound_test"]))[: cfg.get("sound_limit")]
    aliases = out["data"]["aliases"]
    batch_size = int(cfg.get("batch_size", 16))
    refs = [s["text"] for s in speech]  # the sentences espeak-ng spoke
    metrics: dict[str, Any] = {}
    rows = []
    for name, trained in MODELS.items():
        model = _load(out[name]["model"])
        heard = _answers(model, TRANSCRIBE, speech, batch_size, int(cfg.get("speech_max_new_tokens", 24)))
        named = _answers(model, QUESTION, sounds, batch_size, int(cfg.get("sound_max_new_tokens", 8)))
        del model
        asr = {"wer": wer(refs, heard), "cer": cer(refs, heard), "n": len(refs), "examples": heard[:3]}
        sound = label_accuracy(named, [s["label"] for s in sounds], aliases)
        sound["examples"] = named[:3]
        metrics[name] = {"trained": trained, "asr": asr, "sound": sound}
        records = [
            {"audio": s["audio"], "reference": ref, "prediction": h, "wer": wer([ref], [h])}
            for s, ref, h in zip(speech, refs, heard)
        ]
        records += [
            {"audio": s["audio"], "label": s["label"], "prediction": p, "named": extract_label(p, aliases)}
            for s, p in zip(sounds, named)
        ]
        atomic_write_text(folder / f"predictions_{name}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        rows.append(
            (name, trained, f"{100 * asr['wer']:.1f}", f"{100 * asr['cer']:.1f}", f"{100 * sound['accuracy']:.1f}")
        )
        ctx.log(
            f"        {name} ({trained}): WER {100 * asr['wer']:.1f} %, CER {100 * asr['cer']:.1f} %, "
            f"sound accuracy {100 * sound['accuracy']:.1f} %"
        )
    chance = 1 / len(aliases)
    header = (
        "model",
        "trained",
        f"speech WER % ({len(speech)} clips)",
        "speech CER %",
        f"sound acc % (chance {100 * chance:.1f})",
    )
    return {
        "models": metrics,
        "table": format_table(rows, header=header),
        "speech_clips": len(speech),
        "sound_clips": len(sounds),
        "chance": {"sound": chance},
    }
