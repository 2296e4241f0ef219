"""Reading a caption's temporal composition: its connectives and the event segments they join.

A caption is split at its temporal connectives ("followed by", "before", "after", "then", "while", "as",
"amid", "together with", …) into event segments (``analyze``); the resulting ``Composition`` knows the order
in time its connectives claim (``timeline``) and renders the caption again with segments or connectives
replaced — what the rules of ``clapkit.compose.captions`` rewrite.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "CONNECTIVES",
    "CONNECTIVES_BY_PHRASE",
    "LEADING_CONNECTIVES",
    "Composition",
    "Connective",
    "analyze",
]

Relation = Literal["sequence", "overlap", "unordered"]


@dataclass(frozen=True)
class Connective:
    """A word or phrase that relates two events in time.

    Attributes:
        phrase: Lower-case text ("followed by").
        relation: "sequence", "overlap" or "unordered" ("and": no temporal claim).
        forward: For sequences, whether the left event happens first ("before": yes, "after": no).
        symmetric: For overlaps, whether swapping the sides keeps the meaning ("while": yes, "amid": no —
            the left event is in the foreground).
        mirror: The connective that says the same with the sides swapped ("before" ↔ "after").
        pattern: Regex for the phrase when it needs guards ("as" but not "as if").
    """

    phrase: str
    relation: Relation
    forward: bool = True
    symmetric: bool = True
    mirror: str | None = None
    pattern: str | None = None


#: Connectives that join two segments ("A followed by B"), matched longest first.
CONNECTIVES: tuple[Connective, ...] = (
    Connective("followed by", "sequence", mirror="preceded by"),
    Connective("preceded by", "sequence", forward=False, mirror="followed by"),
    Connective("before", "sequence", mirror="after"),
    Connective("after", "sequence", forward=False, mirror="before"),
    Connective("and then", "sequence"),
    Connective("then", "sequence"),
    Connective("and afterwards", "sequence"),
    Connective("after which", "sequence"),
    Connective("and later", "sequence"),
    Connective("and subsequently", "sequence"),
    Connective("and finally", "sequence"),
    Connective("following", "sequence", forward=False),
    Connective("while", "overlap"),
    Connective("whilst", "overlap"),
    Connective(
        "as",
        "overlap",
        pattern=r"(?<!well\s)(?<!same\s)(?<!soon\s)(?<!long\s)(?<!such\s)"
        r"as(?!\s+(?:if|though|well|soon|long|much|many|far|a result)\b)",
    ),
    Connective("together with", "overlap"),
    Connective("along with", "overlap"),
    Connective("alongside", "overlap"),
    Connective("at the same time as", "overlap"),
    Connective("simultaneously with", "overlap"),
    Connective("and meanwhile", "overlap"),
    Connective("amidst", "overlap", symmetric=False),
    Connective("amid", "overlap", symmetric=False),
    Connective("and", "unordered"),
)
#: The connectives that join two segments inside a caption, by phrase.
CONNECTIVES_BY_PHRASE = {c.phrase: c for c in CONNECTIVES}
# Subordinate clause first: "After A, B" (A first), "Before A, B" (B first), "While A, B" (together).
LEADING_CONNECTIVES = {
    "after": Connective("after", "sequence", mirror="before"),
    "once": Connective("once", "sequence"),
    "following": Connective("following", "sequence"),
    "before": Connective("before", "sequence", forward=False, mirror="after"),
    "while": Connective("while", "overlap"),
    "as": Connective("as", "overlap"),
    "when": Connective("when", "overlap"),
}
_PREFIX = re.compile(r"^(first(?:ly)?|initially|at first)\s*,?\s+", re.IGNORECASE)
_MIN_SEGMENT_WORDS = 2


def _infix_regex() -> re.Pattern:
    parts = sorted(CONNECTIVES, key=lambda c: -len(c.phrase))
    alternation = "|".join(f"(?P<c{i}>{c.pattern or re.escape(c.phrase)})" for i, c in enumerate(parts))
    return re.compile(rf"(?:\s*,\s*|\s+)(?:{alternation})(?=\s)\s*", re.IGNORECASE), parts


_INFIX, _INFIX_ORDER = _infix_regex()
LEADING_CONNECTIVES_FORM = re.compile(rf"^({'|'.join(LEADING_CONNECTIVES)})\s+(.+?)\s*,\s*(.+)$", re.IGNORECASE)


def _decap(text: str) -> str:
    """Lower the first letter unless the word is an acronym ("TV")."""
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        return text[0].lower() + text[1:]
    return text


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


@dataclass
class Composition:
    """A caption split into event segments joined by connectives.

    Attributes:
        segments: Event descriptions in written order, first letter lowered.
        links: The connective between segment i and i + 1 (for ``leading`` captions: the leading word).
        joins: The original text of each link, spaces and commas included (reused when a link is kept).
        leading: "After A, B" form.
        prefix: A kept opening word ("first ").
        capital: The caption started with a capital letter.
        end: Final punctuation.
    """

    segments: list[str]
    links: list[Connective]
    joins: list[str] = field(default_factory=list)
    leading: bool = False
    prefix: str = ""
    capital: bool = True
    end: str = ""

    def render(self, segments: Sequence[str] | None = None, links: Sequence[Connective] | None = None) -> str:
        """The caption with some segments or links replaced (unchanged links keep their original text)."""
        segments = list(self.segments if segments is None else segments)
        new_links = list(self.links if links is None else links)
        if self.leading:
            text = f"{new_links[0].phrase} {segments[0]}, {segments[1]}"
        else:
            pieces = [self.prefix + segments[0]]
            for i, link in enumerate(new_links):
                kept = link == self.links[i]
                join = self.joins[i] if kept else (", then " if link.phrase == "then" else f" {link.phrase} ")
                pieces += [join, segments[i + 1]]
            text = "".join(pieces)
        return (_cap(text) if self.capital else text) + self.end

    def timeline(self) -> list[list[int]] | None:
        """Segment indices grouped by time, earliest first ([[0], [1]] = 0 then 1; [[0, 1]] = together).

        ``None`` when the caption does not say (an "and", or sequence links that point both ways).
        """
        relations = {link.relation for link in self.links}
        n = len(self.segments)
        if relations == {"overlap"} and n == 2:
            return [[0, 1]]
        if relations != {"sequence"}:
            return None
        directions = {link.forward for link in self.links}
        if len(directions) != 1:
            return None
        order = list(range(n)) if directions.pop() else list(reversed(range(n)))
        return [[i] for i in order]


def analyze(caption: str) -> Composition | None:
    """Split a caption at its connectives; ``None`` when it has none (or a side is too short to be an event)."""
    text = caption.strip()
    end = ""
    match = re.search(r"[.!?]+$", text)
    if match:
        text, end = text[: match.start()].rstrip(), match.group()
    capital = text[:1].isupper()
    text = _decap(text)
    leading = LEADING_CONNECTIVES_FORM.match(text)
    if leading:
        word, first, second = leading.groups()
        segments = [_decap(first), _decap(second)]
        if any(len(s.split()) < _MIN_SEGMENT_WORDS for s in segments) or _INFIX.search(" " + first + " "):
            return None
        return Composition(segments, [LEADING_CONNECTIVES[word.lower()]], leading=True, capital=capital, end=end)
    prefix = ""
    match = _PREFIX.match(text)
    if match:
        prefix, text = match.group(0), text[match.end() :]
    segments, links, joins, start = [], [], [], 0
    for match in _INFIX.finditer(text):
        name = next(k for k, v in match.groupdict().items() if v is not None)
        segments.append(text[start : match.start()])
        links.append(_INFIX_ORDER[int(name[1:])])
        joins.append(match.group(0))
        start = match.end()
    segments.append(text[start:])
    if not links or any(len(s.split()) < _MIN_SEGMENT_WORDS for s in segments):
        return None
    return Composition([_decap(s) for s in segments], links, joins, prefix=prefix, capital=capital, end=end)
