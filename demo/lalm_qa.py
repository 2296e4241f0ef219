"""The LALM step's data and questions: clips, scenes and held-out rows (:class:`LalmData`), the QA items of the
two stages, the held-out questions and their scoring.

Stage 1 (alignment) asks "Describe the sound." → a caption of a training clip (and of a training scene). Stage 2
(instruction tuning) asks "What sound is this?" → the clip's class phrase ("A dog barks."), and "Which sound comes
first?" as a two-way multiple choice over the events of a training scene, each scene asked with both option orders.
The held-out questions are the label question on every held-out clip (the class is extracted from the free-text
answer: its name or any phrasing of the config's ``phrases`` table counts; chance 1 / classes) and the order
question on the held-out CompA-order scenes, each row's scene and its reversal with the same two options, so an
answer that ignores the audio scores exactly 50 %.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from clapkit.lalm import ConversationSample, user_content
from clapkit.lalm.evaluate import label_accuracy, mc_prompt, multiple_choice_accuracy

__all__ = [
    "LALM_METRICS",
    "LalmData",
    "OrderRow",
    "QADataset",
    "QAItem",
    "TrainClip",
    "TrainScene",
    "class_aliases",
    "eval_samples",
    "event_phrases",
    "item_lengths",
    "label_answers",
    "order_choices",
    "score_predictions",
    "stage1_items",
    "stage2_items",
]

#: Rows the LALM step adds to the demo's side-by-side table (result key path, chance key path), in the column of
#: the arm that is the LALM's encoder.
LALM_METRICS: tuple[tuple[str, str, str], ...] = (
    ("LALM label accuracy (free text)", "lalm.label_accuracy", "lalm.label_chance"),
    ("LALM order MC accuracy", "lalm.order_accuracy", "lalm.order_chance"),
)

DESCRIBE = (
    "Describe the sound.",
    "What do you hear?",
    "Write a short caption for this audio.",
    "Describe this recording in a few words.",
)
LABEL_QUESTIONS = (  # the first is the held-out question
    "What sound is this?",
    "What do you hear in this clip?",
    "Name the sound in this recording.",
    "What is making this sound?",
)
ORDER_QUESTION = "Which sound comes first?"


# ---------------------------------------------------------------------------------------------------- data
@dataclass
class TrainClip:
    """A single-event clip: its feature key, class and captions."""

    key: str
    label: str
    captions: list[str] = field(default_factory=list)


@dataclass
class TrainScene:
    """A composed scene: feature key, captions, and its two events in playing order (``None``: not two in turn)."""

    key: str
    captions: list[str]
    order: tuple[str, str] | None = None


@dataclass
class OrderRow:
    """A held-out CompA-order row: a scene (``first`` then ``second``) and its reversal."""

    key: str
    reversed_key: str
    first: str
    second: str


@dataclass
class LalmData:
    """Everything the LALM stages read.

    Attributes:
        phrases: Class → ``[[subject, verb, gerund], …]`` (the demo config's ``phrases``).
        classes: The label set of the held-out question (chance = 1 / its size).
        train_clips: Clips for captions (stage 1) and the label question (stage 2).
        train_scenes: Scenes for captions (stage 1) and the order question (stage 2).
        test_clips: Held-out clips for the label question.
        test_order: Held-out scenes for the order question.
        features: Feature key → encoder frame features [T, D] (``audio_sequence`` of the clip).
    """

    phrases: dict[str, list[list[str]]]
    classes: list[str]
    train_clips: list[TrainClip]
    train_scenes: list[TrainScene]
    test_clips: list[TrainClip]
    test_order: list[OrderRow]
    features: Mapping[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------------- QA
def event_phrases(label: str, phrases: Mapping[str, Sequence[Sequence[str]]]) -> list[tuple[str, str, str]]:
    """``(subject, verb, gerund)`` phrasings of a class (the class name itself when the table has none)."""
    rows = [tuple(v) for v in phrases.get(label, [])]
    for row in rows:
        if len(row) != 3:
            raise ValueError(f"phrases.{label}: {list(row)} is not [subject, verb, gerund]")
    return rows or [(label.replace("_", " "), "sounds", "sounding")]


def label_answers(label: str, phrases: Mapping[str, Sequence[Sequence[str]]]) -> list[str]:
    """Answers to "What sound is this?": "A dog barks." / "A puppy yapping." for each phrasing."""
    out = []
    for subject, verb, gerund in event_phrases(label, phrases):
        cap = subject[:1].upper() + subject[1:]
        out += [f"{cap} {verb}.", f"{cap} {gerund}."]
    return list(dict.fromkeys(out))


def class_aliases(
    phrases: Mapping[str, Sequence[Sequence[str]]], classes: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """Class → the phrasings that name it in an answer (``clapkit.lalm.evaluate.extract_label`` adds the name).

    Each ``[subject, verb, gerund]`` gives the subject, the verb, the gerund, "subject verb" and "subject
    gerund"; a phrasing that several classes share ("someone", "playing") names none of them.
    """
    out: dict[str, list[str]] = {}
    for label in classes if classes is not None else phrases:
        names = []
        for subject, verb, gerund in event_phrases(label, phrases):
            names += [subject, verb, gerund, f"{subject} {verb}", f"{subject} {gerund}"]
        out[label] = list(dict.fromkeys(names))
    return out


def order_choices(first: str, second: str, text: Callable[[str], str], swap: bool) -> tuple[list[str], str]:
    """Options of "Which sound comes first?" and the answer: ``[first, second]`` (or swapped) as event texts."""
    a, b = text(first), text(second)
    if a == b:
        raise ValueError(f"order question over {first!r} and {second!r}: both read {a!r}; give them distinct phrases")
    return ([b, a] if swap else [a, b]), a


@dataclass
class QAItem:
    """One conversation to train on: a clip and the (question, answer) pairs a visit draws from."""

    key: str
    feature_key: str
    pairs: list[tuple[str, str]]
    kind: str


def stage1_items(data: LalmData, clip_repeats: int, scenes: bool) -> list[QAItem]:
    """Alignment: "Describe the sound." (and variants) → one of the clip's or scene's captions."""
    items = []
    for clip in data.train_clips:
        captions = clip.captions or label_answers(clip.label, data.phrases)
        pairs = [(q, c) for q in DESCRIBE for c in captions]
        items += [QAItem(f"caption/{clip.key}", clip.key, pairs, "caption")] * clip_repeats
    if scenes:
        for scene in data.train_scenes:
            if scene.captions:
                pairs = [(q, c) for q in DESCRIBE for c in scene.captions]
                items.append(QAItem(f"caption/{scene.key}", scene.key, pairs, "caption"))
    return items


def stage2_items(data: LalmData, clip_repeats: int, scenes: bool) -> list[QAItem]:
    """Instruction QA: the label question on clips; the order question on scenes, both option orders each."""
    items = []
    for clip in data.train_clips:
        pairs = [(q, a) for q in LABEL_QUESTIONS for a in label_answers(clip.label, data.phrases)]
        items += [QAItem(f"label/{clip.key}", clip.key, pairs, "label")] * clip_repeats
    if scenes:
        for scene in data.train_scenes:
            if scene.order is None:
                continue
            first, second = scene.order
            pairs = []
            for v1 in event_phrases(first, data.phrases):
                for v2 in event_phrases(second, data.phrases):
                    texts = {first: f"{v1[0]} {v1[2]}", second: f"{v2[0]} {v2[2]}"}
                    for swap in (False, True):
                        choices, answer = order_choices(first, second, texts.__getitem__, swap)
                        pairs.append((mc_prompt(ORDER_QUESTION, choices), answer))
            items.append(QAItem(f"order/{scene.key}", scene.key, pairs, "order"))
    return items


def eval_samples(data: LalmData, order_rows: int | None = None) -> list[ConversationSample]:
    """Held-out questions: the label question on each test clip; the order question on each row's two scenes.

    A row's scene and its reversal get the same options (their order alternating from row to row), so the right
    option is "A" for one and "B" for the other, and exactly half of all order answers are "A".
    """

    def text(label: str) -> str:
        subject, _, gerund = event_phrases(label, data.phrases)[0]
        return f"{subject} {gerund}"

    out = []
    for clip in data.test_clips:
        messages = [{"role": "user", "content": user_content("text_audio", LABEL_QUESTIONS[0])}]
        meta = {"kind": "label", "answer": clip.label}
        out.append(ConversationSample(f"label/{clip.key}", messages, features=[data.features[clip.key]], meta=meta))
    rows = data.test_order if order_rows is None else data.test_order[:order_rows]
    for i, row in enumerate(rows):
        choices, _ = order_choices(row.first, row.second, text, swap=bool(i % 2))
        prompt = user_content("text_audio", mc_prompt(ORDER_QUESTION, choices))
        for key, first in ((row.key, row.first), (row.reversed_key, row.second)):
            meta = {"kind": "mc", "choices": choices, "answer": text(first), "row": i}
            messages = [{"role": "user", "content": prompt}]
            out.append(ConversationSample(f"order/{key}", messages, features=[data.features[key]], meta=meta))
    return out


def score_predictions(records: Sequence[dict[str, Any]], classes: Sequence[str], aliases: Mapping) -> dict[str, Any]:
    """Label accuracy (free text → class) and order MC accuracy, each with its chance level."""
    labels = [r for r in records if r["kind"] == "label"]
    order = [r for r in records if r["kind"] == "mc"]
    out: dict[str, Any] = {}
    if labels:
        acc = label_accuracy([r["prediction"] for r in labels], [r["answer"] for r in labels], aliases)
        out.update(label_accuracy=acc["accuracy"], label_unparsed=acc["unparsed"], label_n=acc["n"])
        out.update(label_chance=1 / len(classes), label_classes=len(classes))
    if order:
        choices = [r["choices"] for r in order]
        acc = multiple_choice_accuracy([r["prediction"] for r in order], choices, [r["answer"] for r in order])
        first = sum(c.index(r["answer"]) == 0 for r, c in zip(order, choices)) / len(order)
        out.update(order_accuracy=acc["accuracy"], order_unparsed=acc["unparsed"], order_n=acc["n"])
        out.update(order_chance=0.5, order_answer_a=first)
    return out


def item_lengths(dataset: QADataset, length: Callable[[ConversationSample], int]) -> list[int]:
    """``length`` (e.g. ``AudioLanguageModel.sequence_length``) of each item as its first visit draws it.

    Later visits draw other phrasings of the same question and answer, a few tokens apart; the audio, most of the
    spread, stays. Items of the same text and clip length are measured once.
    """
    out, seen = [], {}
    for i in range(len(dataset)):
        sample = dataset.sample(i, 0)
        key = (repr(sample.messages), tuple(len(f) for f in sample.features))
        if key not in seen:
            seen[key] = length(sample)
        out.append(seen[key])
    return out


class QADataset(Dataset):
    """QA items as ``ConversationSample`` s on stored encoder features, for ``LalmModule``'s collator.

    Each visit of an item draws one of its (question, answer) pairs, seeded by (seed, item, visit): a run repeats
    exactly, and epochs see other phrasings and option orders.
    """

    def __init__(self, items: Sequence[QAItem], features: Mapping[str, torch.Tensor], seed: int) -> None:
        missing = sorted({it.feature_key for it in items} - set(features))
        if missing:
            raise KeyError(f"no encoder features for {len(missing)} clips, e.g. {missing[0]!r}")
        self.items, self.features, self.seed = list(items), features, seed
        self.visits = [0] * len(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> ConversationSample:
        sample = self.sample(i, self.visits[i])
        self.visits[i] += 1
        return sample

    def sample(self, i: int, visit: int) -> ConversationSample:
        """Item ``i`` as drawn at its ``visit``-th visit (``__getitem__`` without counting the visit)."""
        item = self.items[i]
        rng = random.Random(f"{self.seed}/{i}/{visit}")
        question, answer = item.pairs[rng.randrange(len(item.pairs))]
        messages = [
            {"role": "user", "content": user_content("text_audio", question)},
            {"role": "assistant", "content": answer},
        ]
        features = [self.features[item.feature_key]]
        return ConversationSample(item.key, messages, features=features, meta={"kind": item.kind})
