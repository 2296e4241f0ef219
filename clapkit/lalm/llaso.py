"""LLaSO-style instruction data → clapkit conversation records (and shards, through ``clapkit.data.write_shards``).

LLaSO (Sun et al., 2025) trains on instructions in three modality layouts: a **text instruction with audio input**
(``text_audio``: "Transcribe the audio." + a clip), an **audio instruction with text input** (``audio_text``: a
spoken instruction + a written text) and **pure audio** (``pure_audio``: a spoken instruction and its audio input,
in one clip or two). Its JSON follows the LLaVA / ShareGPT conversation format, which this module reads:

```json
{"id": "sample-1",
 "conversations": [{"from": "human", "value": "What is the capital of the country below?\\n<audio>"},
                   {"from": "gpt", "value": "Paris."}],
 "audio": "clips/spoken_instruction.wav",
 "layout": "audio_text", "task": "capitals", "answerable": true}
```

- ``conversations``: turns with ``from`` (``human`` / ``gpt``, or ``user`` / ``assistant``) and ``value`` (or
  ``role`` / ``content``); each ``<audio>`` or ``<speech>`` marker (any case) is where a clip goes, in order;
- ``audio`` (or ``audios``, ``speech``, ``voice``): one path or a list, in marker order, relative to
  ``audio_root`` (default: the JSON file's folder);
- ``layout`` (or ``modality``): ``text_audio``, ``audio_text`` or ``pure_audio`` (also ``TA``, ``AT``, ``AA``);
  when absent, a first human turn with no text but its markers is ``pure_audio``, any other ``text_audio``
  (``audio_text`` cannot be told from the text and must be named);
- optional ``task``, ``answerable`` (default true: the answer is in the input; false: the right reply declines,
  which ``clapkit.lalm.evaluate.is_abstention`` recognises), ``id``.

A file is a JSON array or JSON lines. Entries that cannot be used (no conversation, markers and clips that do not
match, a missing clip, an unknown layout) are skipped and counted by reason, with the first few named.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clapkit.data.inputs import InputRecord
from clapkit.lalm.chat import AUDIO_TOKEN, LAYOUTS, count_audio, normalize_messages

__all__ = ["LAYOUT_ALIASES", "LlasoReport", "read_llaso"]

#: Accepted spellings of each layout.
LAYOUT_ALIASES = {
    "text_audio": "text_audio",
    "ta": "text_audio",
    "text-audio": "text_audio",
    "audio_text": "audio_text",
    "at": "audio_text",
    "audio-text": "audio_text",
    "pure_audio": "pure_audio",
    "aa": "pure_audio",
    "pure-audio": "pure_audio",
    "audio": "pure_audio",
}
_MARKERS = re.compile(r"<\s*(?:audio|speech)\s*>(?:\s*<\s*/\s*(?:audio|speech)\s*>)?", re.IGNORECASE)
_AUDIO_KEYS = ("audio", "audios", "speech", "voice")


@dataclass
class LlasoReport:
    """What a conversion read: records per layout, skipped entries per reason, and the first few named."""

    layouts: Counter = field(default_factory=Counter)
    answerable: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def skip(self, where: str, reason: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < 10:
            self.examples.append(f"{where}: {reason}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": sum(self.layouts.values()),
            "layouts": dict(self.layouts),
            "answerable": {str(k).lower(): v for k, v in self.answerable.items()},
            "skipped": dict(self.skipped),
            "examples": list(self.examples),
        }


def _entries(path: Path) -> Iterator[tuple[str, Any]]:
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
        for i, entry in enumerate(data):
            yield f"{path}[{i}]", entry
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{number}", json.loads(line)
        except json.JSONDecodeError as err:
            yield f"{path}:{number}", ValueError(f"not JSON ({err.msg})")


def _layout(entry: dict[str, Any], messages: list[dict[str, str]]) -> str:
    given = entry.get("layout", entry.get("modality"))
    if given is not None:
        name = LAYOUT_ALIASES.get(str(given).strip().lower())
        if name is None:
            raise ValueError(f"unknown layout {given!r} (one of {', '.join(LAYOUTS.names())})")
        return name
    first = next(m for m in messages if m["role"] == "user")
    return "pure_audio" if not _MARKERS.sub("", first["content"]).replace(AUDIO_TOKEN, "").strip() else "text_audio"


def _convert(entry: Any, root: Path) -> tuple[InputRecord, str, bool]:
    if isinstance(entry, Exception):
        raise entry
    if not isinstance(entry, dict):
        raise ValueError("not a JSON object")
    turns = entry.get("conversations", entry.get("conversation", entry.get("messages")))
    if not isinstance(turns, list) or not turns:
        raise ValueError("no conversations")
    turns = [
        {**t, **{k: _MARKERS.sub(AUDIO_TOKEN, t[k]) for k in ("value", "content") if isinstance(t.get(k), str)}}
        if isinstance(t, dict)
        else t
        for t in turns
    ]
    messages = normalize_messages(turns, "conversation")
    if messages[-1]["role"] != "assistant":
        raise ValueError("the conversation does not end with an answer")
    raw = next((entry[k] for k in _AUDIO_KEYS if entry.get(k)), [])
    clips = [raw] if isinstance(raw, str) else list(raw)
    if not all(isinstance(c, str) and c for c in clips):
        raise ValueError("audio must be a path or a list of paths")
    if count_audio(messages) != len(clips):
        raise ValueError(f"{count_audio(messages)} audio markers but {len(clips)} clips")
    if not clips:
        raise ValueError("no audio (LLaSO layouts all carry a clip)")
    paths = [Path(c) if Path(c).is_absolute() else root / c for c in clips]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"missing clip {missing[0]}")
    layout = _layout(entry, messages)
    answerable = entry.get("answerable", True)
    if not isinstance(answerable, bool):
        raise ValueError(f"answerable must be true or false, got {answerable!r}")
    fields: dict[str, Any] = {"conversation": messages, "layout": layout, "answerable": answerable}
    if len(paths) > 1:
        fields["extra_audio"] = [str(p) for p in paths[1:]]
    for key in ("id", "task"):
        if entry.get(key) is not None:
            fields[key] = str(entry[key])
    return InputRecord(str(paths[0]), fields), layout, answerable


def read_llaso(path: str | Path, audio_root: str | Path | None = None) -> tuple[list[InputRecord], LlasoReport]:
    """Records for ``write_shards`` (``require_captions=False``) from a LLaSO-style JSON / JSONL file, and a report.

    Raises:
        ValueError: The file is missing or is a JSON array that does not parse (a bad line of a JSONL file is
            skipped and counted instead).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    root = Path(audio_root) if audio_root is not None else path.parent
    report = LlasoReport()
    records = []
    for where, entry in _entries(path):
        try:
            record, layout, answerable = _convert(entry, root)
        except ValueError as err:
            report.skip(where, str(err))
            continue
        report.layouts[layout] += 1
        report.answerable[answerable] += 1
        records.append(record)
    return records, report
