"""Byte sizes written by people: ``"256MB"``, ``"8GiB"``, ``4096``.

One convention for every size clapkit reads (shard sizes, index memory budgets): SI suffixes are powers of
10 (``kB`` = 1000, ``MB`` = 10^6, ``GB`` = 10^9, ``TB`` = 10^12) and IEC suffixes are powers of 2 (``KiB`` =
1024, ``MiB`` = 2^20, ``GiB`` = 2^30, ``TiB`` = 2^40), as on disk labels and in ``ls -h --si`` / ``ls -h``.
"""

from __future__ import annotations

import re

__all__ = ["SIZE_FORMS", "parse_bytes"]

#: What ``parse_bytes`` accepts, for error messages and help texts.
SIZE_FORMS = (
    "a number of bytes, or a number with kB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"
)

# Letters are matched case-insensitively ("mb", "MB", "Mib" all read the same); a prefix without "B" ("4G") is
# refused rather than guessed, since tools disagree on whether it means 10^9 or 2^30.
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(i)?b|(b))?\s*", re.IGNORECASE)


def parse_bytes(value: int | float | str, what: str = "size") -> int:
    """``"256MB"`` → 256_000_000, ``"8GiB"`` → 8·2^30, ``"4096"`` or ``4096`` → 4096 (bytes).

    Args:
        value: A non-negative number of bytes, or text with an optional unit (see the module doc).
        what: What the size is for, named in the error (e.g. ``"shard size"``).

    Raises:
        ValueError: not a size; the message names the text and the valid forms.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0 or value != value:  # negative or NaN
            raise ValueError(f"{what} {value!r}: expected {SIZE_FORMS}")
        return int(value)
    match = _SIZE.fullmatch(str(value))
    if not match:
        raise ValueError(f"{what} {value!r}: expected {SIZE_FORMS}, e.g. 256MB or 8GiB")
    number, prefix, binary = float(match.group(1)), (match.group(2) or "").lower(), match.group(3)
    power = "kmgt".index(prefix) + 1 if prefix else 0
    return int(number * (1024 if binary else 1000) ** power)
