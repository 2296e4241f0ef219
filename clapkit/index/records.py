"""What an index stores per row (``Entry``) and returns per result (``Hit``)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Entry", "Hit"]


@dataclass
class Entry:
    """Metadata of one indexed window.

    Attributes:
        path: The audio file, or the tar shard that holds the clip.
        start: Window start [s] within the recording.
        end: Window end [s] (``None`` = the end of the recording).
        duration: Length of the whole recording [s].
        captions: Free-text descriptions.
        labels: Class labels.
        member: Tar member name when ``path`` is a shard.
        fields: Any JSON-serialisable user fields.
    """

    path: str = ""
    start: float = 0.0
    end: float | None = None
    duration: float | None = None
    captions: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    member: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def coerce(cls, value: Entry | dict[str, Any] | str | None, where: str) -> Entry:
        """An ``Entry`` from an Entry, a dict with Entry keys, a bare path or ``None``."""
        if isinstance(value, Entry):
            return value
        if value is None:
            return cls()
        if isinstance(value, (str, os.PathLike)):
            return cls(path=str(value))
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an Entry, a dict or a path per row, got {type(value).__name__}")
        known = set(cls.__dataclass_fields__)
        extra = {k: v for k, v in value.items() if k not in known}
        entry = cls(**{k: v for k, v in value.items() if k in known})
        entry.fields = {**entry.fields, **extra}
        for name in ("captions", "labels"):
            items = getattr(entry, name)
            setattr(entry, name, [items] if isinstance(items, str) else list(items or []))
        return entry


@dataclass
class Hit:
    """One search result: the id, the score (higher is better) and the window's metadata.

    For ``cosine`` / ``ip`` indexes the score is the inner product; for ``l2`` it is minus the squared
    distance.
    """

    id: int
    score: float
    path: str
    start: float
    end: float | None
    duration: float | None
    captions: list[str]
    labels: list[str]
    member: str | None
    fields: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
