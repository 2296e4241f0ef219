"""Input listings for the shard writer: a folder, a CSV file or a JSONL file → :class:`InputRecord` s.

* **Folder**: every audio file (recursively, sorted). Its metadata comes from a sidecar with the same
  stem: ``x.json`` (an object with the sample fields) or ``x.txt`` (one caption per non-blank line).
  A file without a sidecar in a sub-folder takes the folder name as its label, and a caption made
  from it (``dog_bark/001.wav`` → label ``dog_bark``, caption ``dog bark``). A file with neither
  is reported as having no caption.
* **CSV**: a header with ``path`` and ``caption``. Columns whose names start with ``caption``,
  ``label``, ``positive`` or ``negative`` fill those lists; a cell may hold several values separated
  by ``|``. Other columns are kept as extra string fields.
* **JSONL**: one object per line with ``audio`` (a path) and the sample fields (``captions`` or
  ``caption``, ``positives``, ``negatives``, ``labels`` …). Unknown fields, such as a ``conversation``
  list, are passed through to the shard unchanged. ``audio`` may also be a list of paths (a conversation
  about several clips): the first is the sample's audio, the others go to ``extra_audio``.

A ``counterfactual_audio`` field (a JSONL or sidecar field, or a CSV column; an empty cell means none) names
the sample's counterfactual audio, which the writer stores beside the audio (see :mod:`clapkit.data.schema`).

Relative paths in a CSV or JSONL file (``audio``, ``path``, ``counterfactual_audio``) are relative to the folder
of that file; in a sidecar, to the sidecar's folder. Lines that cannot be
parsed become records with an ``error``; the writer lists them in its report instead of stopping.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clapkit.data.files import find_audio_files
from clapkit.data.schema import COUNTERFACTUAL_FIELD, EXTRA_AUDIO_FIELD

__all__ = ["InputRecord", "read_csv", "read_dir", "read_inputs", "read_jsonl"]

#: Separator of several values in one CSV cell.
CSV_LIST_SEPARATOR = "|"
_CSV_LIST_PREFIXES = ("caption", "label", "positive", "negative")


@dataclass(frozen=True)
class InputRecord:
    """One input sample before encoding.

    Attributes:
        audio: Path of the audio file (empty when the line could not be read).
        fields: Raw metadata (validated later by :class:`clapkit.data.schema.SampleMeta`).
        origin: Where the record came from, for reports (``list.csv:12``, ``clips/x.wav``).
        error: Why the record cannot be used; such records are skipped and reported.
    """

    audio: str
    fields: dict[str, Any] = field(default_factory=dict)
    origin: str = ""
    error: str | None = None


def read_inputs(source: str | Path, *, label_caption: str = "{}") -> list[InputRecord]:
    """Dispatch on the input kind: a folder, ``*.csv`` / ``*.tsv``, or ``*.jsonl``.

    Args:
        source: The folder or listing file.
        label_caption: Template for the caption of a file known only by its label folder.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: an unknown listing type or a CSV without the needed columns.
    """
    path = Path(source)
    if path.is_dir():
        return read_dir(path, label_caption=label_caption)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder or file")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return read_csv(path)
    if suffix in (".jsonl", ".ndjson"):
        return read_jsonl(path)
    raise ValueError(f"{path}: unknown input kind {suffix!r}; give a folder, a .csv/.tsv or a .jsonl file")


def _label_text(label: str) -> str:
    return " ".join(label.replace("_", " ").replace("-", " ").split())


def _sidecar(audio: Path) -> tuple[dict[str, Any] | None, str | None]:
    """Metadata from ``x.json`` or ``x.txt`` next to ``x.wav``: (fields, error), or (None, None) when absent."""
    side_json, side_txt = audio.with_suffix(".json"), audio.with_suffix(".txt")
    if side_json.is_file():
        try:
            raw = json.loads(side_json.read_text(encoding="utf-8"))
        except ValueError as err:
            return {}, f"{side_json}: invalid JSON ({err})"
        if not isinstance(raw, dict):
            return {}, f"{side_json}: expected a JSON object with the sample fields"
        return _resolve_counterfactual(raw, audio.parent), None
    if side_txt.is_file():
        try:
            lines = side_txt.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            return {}, f"{side_txt}: not UTF-8 text ({err})"
        return {"captions": [line for line in lines if line.strip()]}, None
    return None, None


def read_dir(root: str | Path, *, label_caption: str = "{}") -> list[InputRecord]:
    """Audio files under ``root`` with their sidecar captions or label folders (see the module doc)."""
    root = Path(root)
    records = []
    for audio in find_audio_files(root):
        fields, error = _sidecar(audio)
        if fields is None:
            rel_parent = audio.parent.relative_to(root)
            if rel_parent.parts:
                label = audio.parent.name
                fields = {"captions": [label_caption.format(_label_text(label))], "labels": [label]}
            else:
                fields = {}
        records.append(InputRecord(str(audio), fields, origin=str(audio), error=error))
    return records


def _resolve(path: str, base: Path) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else base / p)


def _resolve_counterfactual(fields: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make a relative ``counterfactual_audio`` path relative to ``base``; an empty one means none."""
    value = fields.get(COUNTERFACTUAL_FIELD)
    if isinstance(value, str):
        if value.strip():
            fields[COUNTERFACTUAL_FIELD] = _resolve(value.strip(), base)
        else:
            del fields[COUNTERFACTUAL_FIELD]
    return fields  # other values are left for SampleMeta to report


def read_csv(path: str | Path) -> list[InputRecord]:
    """Rows of a CSV (or TSV) listing with ``path`` and ``caption`` columns (see the module doc).

    Raises:
        ValueError: the header lacks ``path`` or ``caption``.
    """
    path = Path(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    records = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = [h.strip() for h in reader.fieldnames or []]
        if "path" not in header or not any(h.startswith("caption") for h in header):
            raise ValueError(f"{path}: the header needs a 'path' and a 'caption' column, found {header}")
        for row in reader:
            origin = f"{path}:{reader.line_num}"
            row = {(k or "").strip(): v for k, v in row.items()}
            if None in row.values() or "" in row:
                records.append(InputRecord("", {}, origin, f"{origin}: the row has a different number of columns"))
                continue
            fields: dict[str, Any] = {}
            for key, value in row.items():
                if key == "path":
                    continue
                prefix = next((p for p in _CSV_LIST_PREFIXES if key.startswith(p)), None)
                if prefix is None:
                    fields[key] = value
                elif key == "caption" or value.strip():
                    # An empty optional column (caption_2, label …) is absent; an empty main caption is an error.
                    fields.setdefault(prefix + "s", []).extend(value.split(CSV_LIST_SEPARATOR))
            audio = row["path"].strip()
            error = None if audio else f"{origin}: empty path"
            fields = _resolve_counterfactual(fields, path.parent)
            records.append(InputRecord(_resolve(audio, path.parent) if audio else "", fields, origin, error))
    return records


def read_jsonl(path: str | Path) -> list[InputRecord]:
    """Objects of a JSONL listing, one per non-blank line, with an ``audio`` path (see the module doc)."""
    path = Path(path)
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            origin = f"{path}:{number}"
            try:
                raw = json.loads(line)
            except ValueError as err:
                records.append(InputRecord("", {}, origin, f"{origin}: invalid JSON ({err})"))
                continue
            audio = raw.get("audio") if isinstance(raw, dict) else None
            clips = audio if isinstance(audio, list) else [audio]
            if not clips or not all(isinstance(c, str) and c.strip() for c in clips):
                message = f"{origin}: expected an object with an 'audio' path (or a list of paths)"
                records.append(InputRecord("", {}, origin, message))
                continue
            raw.pop("audio")
            audio = clips[0].strip()
            if len(clips) > 1:
                raw[EXTRA_AUDIO_FIELD] = [_resolve(c.strip(), path.parent) for c in clips[1:]]
            records.append(InputRecord(_resolve(audio, path.parent), _resolve_counterfactual(raw, path.parent), origin))
    return records
