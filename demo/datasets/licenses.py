"""Per-file licenses from Debian machine-readable copyright files (DEP-5).

A DEP-5 ``debian/copyright`` is a list of paragraphs; a ``Files:`` paragraph names shell patterns
(paths in the upstream source tree, ``*`` matching across ``/``) and its ``License:``. For any file
the last paragraph whose pattern matches wins. See
https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/ .
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Dep5", "parse_dep5"]


@dataclass(frozen=True)
class _Paragraph:
    patterns: tuple[str, ...]
    license: str


@dataclass(frozen=True)
class Dep5:
    """The ``Files:`` paragraphs of one DEP-5 copyright file, in file order."""

    paragraphs: tuple[_Paragraph, ...]

    def license(self, path: str) -> str | None:
        """Short license name of ``path`` (a path in the upstream source tree), ``None`` if unmatched."""
        found = None
        for para in self.paragraphs:
            if any(fnmatch.fnmatchcase(path, pattern) for pattern in para.patterns):
                found = para.license
        return found


def _fields(block: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = None
    for line in block.splitlines():
        if line[:1] in (" ", "\t"):
            if key is not None:
                fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
    return fields


def parse_dep5(source: str | Path) -> Dep5 | None:
    """Parse a copyright file (a path or its text); ``None`` if it is not in the DEP-5 format."""
    text = Path(source).read_text(errors="replace") if isinstance(source, Path) else source
    if "Format:" not in text.split("\n\n", 1)[0]:
        return None
    paragraphs = []
    for block in text.split("\n\n"):
        fields = _fields(block)
        if "files" in fields and "license" in fields:
            patterns = tuple(fields["files"].split())
            paragraphs.append(_Paragraph(patterns, fields["license"].split("\n", 1)[0].strip()))
    return Dep5(tuple(paragraphs))
