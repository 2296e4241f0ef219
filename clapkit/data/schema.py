"""The sample schema of clapkit shards and the manifest that describes a shard folder.

A shard is a tar file of samples; each sample is two or three members with the same key::

    000000042.flac                  mono audio, 16- or 24-bit FLAC
    000000042.json                  {"captions": [...], "positives": [...], "negatives": [...],
                                     "labels": [...], "duration": 9.87, "source": "clips/dog.wav", ...}
    000000042.counterfactual.flac   optional: counterfactual audio, stored like the main audio
    000000042.1.flac, ….2.flac      optional: further clips of a multi-clip conversation (``extra_audio``)

``captions`` describe the audio; ``positives`` are paraphrases that mean the same (AF-CLAP);
``negatives`` are hard negatives that describe a different scene (CompA); ``labels`` are class names;
``duration`` is the stored audio in seconds; ``source`` names where the audio came from. Any other
field (for example a ``conversation`` list of turns for LALM training) is kept as it is, in
:attr:`SampleMeta.extra`, so that new kinds of samples need no change here.

Counterfactual audio is a different scene made of the same events as the sample (the events reversed,
in sequence instead of overlapping, the attributes swapped; see ``clapkit.compose.scenes``): an audio-side
hard negative for the sample's captions. An input record names its file in ``counterfactual_audio``; the
writer stores that audio as the ``counterfactual.flac`` member and keeps the file name in the JSON's
``counterfactual_audio`` field (in :attr:`SampleMeta.extra`), as ``source`` keeps the main audio's.

A conversation about several clips (LALM training, ``clapkit.lalm``) names its further clips, in the order of its
``<Audio>`` markers after the first, in ``extra_audio``; the writer stores them as ``1.flac``, ``2.flac`` ….
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clapkit.config import from_mapping

__all__ = [
    "COUNTERFACTUAL_FIELD",
    "COUNTERFACTUAL_PREFIX",
    "EXTRA_AUDIO_FIELD",
    "MANIFEST_NAME",
    "REPORT_NAME",
    "TEXT_FIELDS",
    "Manifest",
    "SampleMeta",
    "ShardInfo",
    "load_manifest",
]

#: File names inside a shard folder.
MANIFEST_NAME = "manifest.json"
REPORT_NAME = "report.json"

#: Input / metadata field that names the counterfactual audio file of a sample.
COUNTERFACTUAL_FIELD = "counterfactual_audio"
#: Extension prefix of the counterfactual audio member (``<key>.counterfactual.flac``).
COUNTERFACTUAL_PREFIX = "counterfactual."
#: Input / metadata field that lists the further audio files of a multi-clip sample (members ``1.flac``, ``2.flac`` …).
EXTRA_AUDIO_FIELD = "extra_audio"

#: Fields that hold lists of texts.
TEXT_FIELDS = ("captions", "positives", "negatives", "labels")

# Singular spellings accepted on input and merged into the list field (``text`` is LAION-CLAP's caption field).
_ALIASES = {
    "caption": "captions",
    "text": "captions",
    "positive": "positives",
    "negative": "negatives",
    "label": "labels",
}

MANIFEST_VERSION = 1


def _texts(value: Any, field_name: str, name: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"{name}: {field_name} must be a string or a list of strings, got {type(value).__name__}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ValueError(f"{name}: {field_name}[{i}] must be a string, got {type(item).__name__}")
        text = item.strip()
        if not text:
            raise ValueError(f"{name}: {field_name}[{i}] is empty; remove it or write the text")
        out.append(text)
    return out


@dataclass
class SampleMeta:
    """The ``<key>.json`` of one sample.

    Attributes:
        captions: Texts that describe the audio (one is drawn per training step).
        positives: Paraphrases with the same meaning (linguistic-invariance positives).
        negatives: Hard negatives: texts that describe a different scene.
        labels: Class names.
        duration: Seconds of stored audio, before any crop or pad.
        source: Where the audio came from (a path or an id).
        extra: Every other field, kept unchanged (e.g. ``conversation``).
    """

    captions: list[str] = field(default_factory=list)
    positives: list[str] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    duration: float | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], name: str = "sample") -> SampleMeta:
        """Validate a metadata mapping; singular aliases (``caption``, ``text``, ``label`` …) join their list.

        Raises:
            ValueError: a text field that is not text, an empty text, or a bad ``duration`` / ``source`` /
                ``counterfactual_audio``.
        """
        if not isinstance(raw, Mapping):
            raise ValueError(f"{name}: metadata must be a JSON object, got {type(raw).__name__}")
        texts: dict[str, list[str]] = {f: [] for f in TEXT_FIELDS}
        extra: dict[str, Any] = {}
        # The list field comes before its singular aliases, so the first caption stays first.
        for key, value in sorted(raw.items(), key=lambda item: item[0] in _ALIASES):
            target = _ALIASES.get(key, key)
            if target in texts:
                if value is not None:
                    texts[target].extend(_texts(value, key, name))
            elif key not in ("duration", "source"):
                extra[key] = value
        duration = raw.get("duration")
        if duration is not None:
            if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration):
                raise ValueError(f"{name}: duration must be a number of seconds, got {duration!r}")
            if duration < 0:
                raise ValueError(f"{name}: duration must not be negative, got {duration}")
            duration = float(duration)
        source = raw.get("source")
        if source is not None and not isinstance(source, str):
            raise ValueError(f"{name}: source must be a string, got {type(source).__name__}")
        counterfactual = raw.get(COUNTERFACTUAL_FIELD)
        if counterfactual is not None and (not isinstance(counterfactual, str) or not counterfactual.strip()):
            raise ValueError(
                f"{name}: {COUNTERFACTUAL_FIELD} must name the counterfactual audio file, got {counterfactual!r}"
            )
        more = raw.get(EXTRA_AUDIO_FIELD)
        if more is not None and (not isinstance(more, list) or not all(isinstance(p, str) and p.strip() for p in more)):
            raise ValueError(f"{name}: {EXTRA_AUDIO_FIELD} must be a list of audio files, got {more!r}")
        return cls(**texts, duration=duration, source=source, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """Known fields first, then the extra ones."""
        out: dict[str, Any] = {f: list(getattr(self, f)) for f in TEXT_FIELDS}
        out["duration"] = self.duration
        out["source"] = self.source
        out.update(self.extra)
        return out

    def to_json_bytes(self) -> bytes:
        """UTF-8 JSON of :meth:`to_dict`.

        Raises:
            ValueError: an extra field that JSON cannot hold.
        """
        try:
            return json.dumps(self.to_dict(), ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError) as err:
            raise ValueError(f"sample metadata is not JSON-serialisable: {err}") from err

    @classmethod
    def from_json_bytes(cls, data: bytes, name: str = "sample") -> SampleMeta:
        """Parse and validate a ``<key>.json`` member.

        Raises:
            ValueError: not UTF-8 JSON, or invalid fields.
        """
        try:
            raw = json.loads(data)
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ValueError(f"{name}: invalid JSON ({err})") from err
        return cls.from_dict(raw, name)


@dataclass
class ShardInfo:
    """One finished shard.

    Attributes:
        name: File name inside the shard folder.
        count: Samples in the shard.
        bytes: File size.
        first_index: Index of the first input record the shard covers.
        end_index: One past the last input record it covers (skipped inputs included).
    """

    name: str
    count: int
    bytes: int
    first_index: int
    end_index: int


@dataclass
class Manifest:
    """``manifest.json``: the shard list with sample counts, written after every finished shard.

    Attributes:
        shards: Finished shards in order.
        num_inputs: Input records (files or lines) the writer was given.
        skipped: Inputs skipped so far (listed in ``report.json``).
        sample_rate: Hz of the stored audio; ``None`` when each file kept its own rate.
        bits: FLAC sample depth.
        fingerprint: Hash of the inputs and settings; a resumed write must match it.
        complete: ``True`` once every input was handled.
        source: The input the shards were written from.
    """

    shards: list[ShardInfo] = field(default_factory=list)
    num_inputs: int = 0
    skipped: int = 0
    sample_rate: int | None = None
    bits: int = 16
    fingerprint: str = ""
    complete: bool = False
    source: str = ""
    version: int = MANIFEST_VERSION

    @property
    def total(self) -> int:
        """Samples over all finished shards."""
        return sum(s.count for s in self.shards)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["total"] = self.total
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], name: str = MANIFEST_NAME) -> Manifest:
        """Raises ValueError on a manifest this version cannot read (the message names it)."""
        if not isinstance(raw, Mapping) or raw.get("version") != MANIFEST_VERSION:
            found = raw.get("version") if isinstance(raw, Mapping) else type(raw).__name__
            raise ValueError(
                f"{name}: not a clapkit shard manifest of version {MANIFEST_VERSION} ({found!r}); rewrite the shards"
            )
        stored = {k: v for k, v in raw.items() if k != "total"}  # written for readers; derived from the shards
        return from_mapping(cls, stored, name)


def load_manifest(path: str | Path) -> Manifest:
    """Read ``manifest.json`` from a shard folder or a manifest path.

    Raises:
        FileNotFoundError: no manifest there.
        ValueError: the file is not a manifest.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no shard manifest; write shards with `clapkit shards write`") from None
    except ValueError as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from err
    return Manifest.from_dict(raw, str(path))
