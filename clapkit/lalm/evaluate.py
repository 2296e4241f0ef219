"""Scoring audio-language model answers.

* Multiple choice in MMAU's format (``question``, ``choices``, ``answer``): the chosen option is extracted
  from free text (an option letter, or the one option whose text the answer names); accuracy.
* Transcription: word and character error rates (``jiwer``, corpus level: total edits / total reference length).
* Abstention on closed questions (LLaSO): answers that decline, or name no option.
* Labels: exact match after normalisation, and whether the label is named anywhere in the answer; or, over a
  closed label set with several phrasings per label, the one label an answer names (``extract_label``).

``score`` takes prediction records ``{"kind": "mc" | "asr" | "label" | "open", "prediction", "answer",
"choices"?, "group"?}`` and returns the metrics per kind (and per ``group``, e.g. MMAU's sound / music /
speech).
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jiwer

__all__ = [
    "KINDS",
    "abstention_rate",
    "cer",
    "contains_match",
    "exact_match",
    "extract_choice",
    "extract_label",
    "is_abstention",
    "label_accuracy",
    "make_record",
    "mc_prompt",
    "multiple_choice_accuracy",
    "normalize_text",
    "predict",
    "read_mmau",
    "score",
    "wer",
]

KINDS = ("mc", "asr", "label", "open")
LETTERS = string.ascii_uppercase

_PUNCT = re.compile(r"[^\w\s']|_")
_SPACES = re.compile(r"\s+")
_REFUSALS = re.compile(
    r"\b(i (?:can ?not|can't|am unable to|'m unable to|am not able to|'m not able to|don't know|do not know)"
    r"|unable to (?:determine|tell|identify|answer)|cannot be determined|not possible to (?:determine|tell)"
    r"|(?:there is )?no (?:audio|sound) (?:provided|given|available)|i'm sorry|i am sorry|as an ai)\b"
)
# "(B)", "B)", "B.", "B:", "option B", "answer is B", or a bare "B" as the whole answer. Letters are upper case
# only, so the article in "the answer is a dog" is not option A.
_LETTER_PATTERNS = (
    re.compile(r"^\s*\(?([A-Z])\)?\s*$"),
    re.compile(r"^\s*\(([A-Z])\)"),
    re.compile(r"^\s*([A-Z])[.):](?:\s|$)"),
    re.compile(r"\b(?i:answer|option|choice)\s*(?i:is|:)?\s*\(?([A-Z])\)?(?:[\s.,:)]|$)"),
)


def normalize_text(text: str) -> str:
    """Lower case, Unicode NFKC, punctuation (except apostrophes) to spaces, single spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACES.sub(" ", _PUNCT.sub(" ", text)).strip()


def _contains(haystack: str, needle: str) -> bool:
    """Whole-word containment of normalised ``needle`` in normalised ``haystack``."""
    return bool(needle) and f" {needle} " in f" {haystack} "


def mc_prompt(question: str, choices: Sequence[str]) -> str:
    """A multiple-choice question with lettered options, as the model sees it."""
    options = "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
    return f"{question}\nChoices:\n{options}\nAnswer with the text of one choice."


def extract_choice(prediction: str, choices: Sequence[str]) -> int | None:
    """The option a free-text answer picks, or ``None`` when it picks none or is ambiguous.

    Order of tests: an option letter in a recognised form ("B", "(B)", "B.", "answer is B"); the
    answer equal to an option's text; the options whose text the answer names (whole words): when several
    are named, the longest wins if it contains the others ("dog barking" over "dog"), else none.
    """
    if not choices:
        raise ValueError("extract_choice needs at least one choice")
    for pattern in _LETTER_PATTERNS:
        match = pattern.search(prediction)
        if match and match.group(1) in LETTERS[: len(choices)]:
            return LETTERS.index(match.group(1))
    pred = normalize_text(prediction)
    norm = [normalize_text(c) for c in choices]
    for i, c in enumerate(norm):
        if pred == c:
            return i
    return _named(pred, norm)


def _named(pred: str, strings: Sequence[str]) -> int | None:
    """Index of the string a normalised answer names (the longest when it contains the other named ones)."""
    named = [i for i, c in enumerate(strings) if _contains(pred, c)]
    if not named:
        return None
    longest = max(named, key=lambda i: len(strings[i]))
    return longest if all(_contains(strings[longest], strings[i]) for i in named) else None


def extract_label(prediction: str, aliases: Mapping[str, Sequence[str]]) -> str | None:
    """The label a free-text answer names, over a closed label set with several phrasings per label.

    Each label is named by itself (underscores read as spaces) or by any of its ``aliases`` ("dog": ["a dog
    barks", "a puppy"]). A phrasing shared by several labels names none of them. The answer names the labels of
    the phrasings it contains (whole words, after ``normalize_text``): one label is the answer ("a puppy is
    barking"); of several, the one with the longest phrasing wins if that phrasing contains the others'
    ("someone splashes through water" over "water"); otherwise, or when none is named, the answer is unparsed
    (``None``).

    Args:
        prediction: The answer.
        aliases: Label → its other phrasings.
    """
    owners: dict[str, set[str]] = defaultdict(set)
    for label, names in aliases.items():
        for name in (label.replace("_", " "), *names):
            owners[normalize_text(name)].add(label)
    owner = {s: next(iter(labels)) for s, labels in owners.items() if s and len(labels) == 1}
    pred = normalize_text(prediction)
    named = [s for s in owner if _contains(pred, s)]
    if not named:
        return None
    longest = max(named, key=len)
    rivals = [s for s in named if owner[s] != owner[longest]]
    return owner[longest] if all(_contains(longest, s) for s in rivals) else None


def label_accuracy(
    predictions: Sequence[str], references: Sequence[str], aliases: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """Accuracy of the labels extracted from free-text answers (``extract_label``) against reference labels.

    Returns:
        ``accuracy`` (unparsed answers count as wrong), ``unparsed`` (fraction naming no single label), ``n``.
    """
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions and {len(references)} references")
    unknown = sorted(set(references) - set(aliases))
    if unknown:
        raise ValueError(f"reference labels {unknown[:5]} are not in the label set; add them to aliases")
    picked = [extract_label(p, aliases) for p in predictions]
    n = len(predictions)
    return {
        "accuracy": sum(p == r for p, r in zip(picked, references)) / n if n else 0.0,
        "unparsed": sum(p is None for p in picked) / n if n else 0.0,
        "n": n,
    }


def _answer_index(answer: str | int, choices: Sequence[str]) -> int:
    if isinstance(answer, int):
        if not 0 <= answer < len(choices):
            raise ValueError(f"answer index {answer} is out of range for {len(choices)} choices")
        return answer
    norm = [normalize_text(c) for c in choices]
    target = normalize_text(answer)
    if target in norm:
        return norm.index(target)
    if len(answer.strip()) == 1 and answer.strip().upper() in LETTERS[: len(choices)]:
        return LETTERS.index(answer.strip().upper())
    raise ValueError(f"answer {answer!r} is not one of the choices {list(choices)}")


def multiple_choice_accuracy(
    predictions: Sequence[str], choices: Sequence[Sequence[str]], answers: Sequence[str | int]
) -> dict[str, float]:
    """MMAU-style accuracy.

    Args:
        predictions: Free-text answers.
        choices: The options of each question.
        answers: The correct option (its text, letter or index).

    Returns:
        ``accuracy`` (unparsed answers count as wrong), ``unparsed`` (fraction with no option extracted), ``n``.
    """
    if not (len(predictions) == len(choices) == len(answers)):
        raise ValueError(f"got {len(predictions)} predictions, {len(choices)} choice lists, {len(answers)} answers")
    picked = [extract_choice(p, c) for p, c in zip(predictions, choices)]
    correct = [p is not None and p == _answer_index(a, c) for p, a, c in zip(picked, answers, choices)]
    n = len(predictions)
    return {
        "accuracy": sum(correct) / n if n else 0.0,
        "unparsed": sum(p is None for p in picked) / n if n else 0.0,
        "n": n,
    }


def _error_rate(references: Sequence[str], hypotheses: Sequence[str], measure: Callable[..., float]) -> float:
    """``measure`` (``jiwer.wer`` / ``jiwer.cer``) on normalised text; undefined when every reference is empty.

    An empty reference among non-empty ones is scored as jiwer does: its hypothesis words are insertions
    counted against the corpus total.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"got {len(references)} references and {len(hypotheses)} hypotheses")
    refs = [normalize_text(r) for r in references]
    if not any(refs):
        # jiwer would score an all-empty corpus as 0 or 1 depending on the hypotheses; neither means anything.
        raise ValueError("error rate is undefined: the references are empty (after normalisation)")
    return float(measure(refs, [normalize_text(h) for h in hypotheses]))


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Word error rate over a corpus (``jiwer.wer`` on normalised text: total word edits / total reference words)."""
    return _error_rate(references, hypotheses, jiwer.wer)


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Character error rate over a corpus (``jiwer.cer`` on normalised text; single spaces count as characters)."""
    return _error_rate(references, hypotheses, jiwer.cer)


def is_abstention(prediction: str, choices: Sequence[str] | None = None) -> bool:
    """An answer that declines (empty, "I cannot tell", "I'm sorry" …) or, for a closed question, names no option."""
    text = normalize_text(prediction.replace("’", "'"))
    if not text or _REFUSALS.search(text):
        return True
    return bool(choices) and extract_choice(prediction, choices) is None


def abstention_rate(predictions: Sequence[str], choices: Sequence[Sequence[str] | None] | None = None) -> float:
    """Fraction of answers to closed questions that abstain (LLaSO)."""
    if not predictions:
        return 0.0
    choices = choices if choices is not None else [None] * len(predictions)
    return sum(is_abstention(p, c) for p, c in zip(predictions, choices)) / len(predictions)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of answers equal to the reference after ``normalize_text``."""
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions and {len(references)} references")
    if not predictions:
        return 0.0
    return sum(normalize_text(p) == normalize_text(r) for p, r in zip(predictions, references)) / len(predictions)


def contains_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of answers that name the reference label (whole words, normalised): label accuracy from free text."""
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions and {len(references)} references")
    if not predictions:
        return 0.0
    hits = sum(_contains(normalize_text(p), normalize_text(r)) for p, r in zip(predictions, references))
    return hits / len(predictions)


def _score_kind(kind: str, records: list[dict[str, Any]]) -> dict[str, float]:
    preds = [str(r.get("prediction", "")) for r in records]
    answers = [r.get("answer") for r in records]
    if kind == "mc":
        choices = [r["choices"] for r in records]
        out = multiple_choice_accuracy(preds, choices, answers)
        out["abstention"] = abstention_rate(preds, choices)
        return out
    if kind == "asr":
        refs = [str(a) for a in answers]
        return {"wer": wer(refs, preds), "cer": cer(refs, preds), "n": len(records)}
    if kind == "label":
        refs = [str(a) for a in answers]
        return {
            "exact_match": exact_match(preds, refs),
            "contains": contains_match(preds, refs),
            "abstention": abstention_rate(preds),
            "n": len(records),
        }
    return {"n": len(records)}


def score(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Metrics per kind, and per ``group`` within a kind.

    Args:
        records: ``{"kind", "prediction", "answer", "choices" (mc), "group" (optional)}``.

    Returns:
        ``{kind: {metric: value, "groups": {group: {metric: value}}}}``.

    Raises:
        ValueError: an unknown kind, or an MC record without choices.
    """
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for i, r in enumerate(records):
        kind = r.get("kind")
        if kind not in KINDS:
            raise ValueError(f"record {i}: kind {kind!r}; valid kinds: {', '.join(KINDS)}")
        if kind == "mc" and not r.get("choices"):
            raise ValueError(f"record {i}: a multiple-choice record needs 'choices'")
        by_kind[kind].append(r)
    out: dict[str, Any] = {}
    for kind, items in by_kind.items():
        out[kind] = _score_kind(kind, items)
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in items:
            if r.get("group") is not None:
                groups[str(r["group"])].append(r)
        if groups:
            out[kind]["groups"] = {g: _score_kind(kind, rs) for g, rs in sorted(groups.items())}
    return out


# ---------------------------------------------------------------------------------------------- running a model


def read_mmau(path: str | Path, sample_rate: int, audio_root: str | Path | None = None) -> Iterator[Any]:
    """MMAU questions (a JSON list of ``{"id", "audio_id", "question", "choices", "answer", "task"}``) as
    conversation samples, audio decoded lazily; relative audio paths are relative to ``audio_root`` (default:
    the JSON file's folder). The MMAU ``task`` (sound / music / speech) becomes the scoring group.
    """
    from clapkit.lalm.chat import AUDIO_TOKEN
    from clapkit.lalm.data import ConversationSample

    path = Path(path)
    try:
        items = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from err
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of MMAU questions")
    root = Path(audio_root) if audio_root is not None else path.parent
    for i, item in enumerate(items):
        missing = [k for k in ("audio_id", "question", "choices", "answer") if k not in item]
        if missing:
            raise ValueError(f"{path}: question {i} lacks {missing}")
        audio = Path(item["audio_id"])
        audio = audio if audio.is_absolute() else root / audio
        prompt = AUDIO_TOKEN + "\n" + mc_prompt(item["question"], item["choices"])
        meta = {"kind": "mc", "choices": item["choices"], "answer": item["answer"], "group": item.get("task")}
        key = str(item.get("id", i))
        yield ConversationSample.from_sources(key, [{"role": "user", "content": prompt}], [audio], sample_rate, meta)


def make_record(sample: Any, prediction: str, reference: str | None) -> dict[str, Any]:
    """A prediction record for ``score``: the kind comes from ``meta["kind"]`` (``mc`` when there are choices,
    else ``open``), the answer from ``meta["answer"]`` or the conversation's final assistant turn."""
    meta = sample.meta
    kind = meta.get("kind") or ("mc" if meta.get("choices") else "open")
    record = {"key": sample.key, "kind": kind, "prediction": prediction, "answer": meta.get("answer", reference)}
    if meta.get("choices"):
        record["choices"] = meta["choices"]
    group = meta.get("group", meta.get("task"))
    if group is not None:
        record["group"] = group
    return record


def predict(
    model: Any,
    samples: Iterable[Any],
    *,
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = False,
    **generate_kwargs: Any,
) -> list[dict[str, Any]]:
    """Generate answers for conversation samples and return prediction records (see ``make_record``)."""
    from clapkit.progress import progress_bar

    collate = model.collator(generation=True)
    records: list[dict[str, Any]] = []
    pending: list[Any] = []

    def flush() -> None:
        batch = collate(pending)
        answers = model.generate_batch(batch, **generate_kwargs)
        records.extend(make_record(s, a, r) for s, a, r in zip(pending, answers, batch["references"]))
        pending.clear()

    bar = progress_bar(total=limit, desc="lalm eval", unit="sample", disable=not progress)
    for sample in samples:
        if limit is not None and len(records) + len(pending) >= limit:
            break
        pending.append(sample)
        bar.update(1)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    bar.close()
    return records
