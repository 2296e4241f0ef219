"""Shared helpers of the evaluation suite: path resolution and the printed results table."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

__all__ = ["format_table", "resolve_path"]


def resolve_path(path: str, root: Path) -> str:
    """``path`` if absolute, else ``root / path``."""
    p = Path(path)
    return str(p if p.is_absolute() else root / p)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_table(
    rows: Mapping[str, object] | list[tuple[str, ...]], header: tuple[str, ...] = ("metric", "value")
) -> str:
    """A plain-text table: a mapping of metric → value, or rows of equal length under ``header``."""
    body = [(k, _fmt(v)) for k, v in rows.items()] if isinstance(rows, Mapping) else [tuple(map(_fmt, r)) for r in rows]
    table = [tuple(header), *body]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(c.ljust(w) for c, w in zip(table[0], widths)), line]
    out += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in body]
    return "\n".join(out)
