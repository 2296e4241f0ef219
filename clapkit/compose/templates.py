"""Caption templates of the scene composer, in pools whose phrasings never overlap.

``TEMPLATES["train"]`` and ``TEMPLATES["test"]`` use disjoint connectives ("followed by", "then", "while", … vs
"precedes", "after which", "alongside", …), so a held-out benchmark composed with ``pool="test"`` asks for
phrasings training never saw; ``TEMPLATES["all"]`` joins them. ``without_connectives`` keeps the lexicon
paraphrase from rewriting one pool's connective into the other's.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from clapkit.compose.composition import CONNECTIVES
from clapkit.compose.lexicon import Lexicon

__all__ = ["TEMPLATES", "TemplatePool", "template_glue", "without_connectives"]


@dataclass(frozen=True)
class TemplatePool:
    """Caption templates per scene kind; fields ``{a.clause}``, ``{a.noun}`` (``b``, ``c`` likewise).

    Attributes:
        sequence: A happens, then B.
        overlap: A and B together; swapping A and B keeps the meaning.
        foreground: A and B together with A in the foreground (A louder than B); swapping A and B does not.
        sequence3: A, then B, then C.
    """

    sequence: tuple[str, ...]
    overlap: tuple[str, ...]
    foreground: tuple[str, ...]
    sequence3: tuple[str, ...]


TEMPLATES: dict[str, TemplatePool] = {
    "train": TemplatePool(
        sequence=(
            "{a.clause}, followed by {b.noun}",
            "{a.noun} followed by {b.noun}",
            "{a.clause}, then {b.clause}",
            "{a.clause} and then {b.clause}",
            "{a.clause} before {b.clause}",
            "{b.clause} after {a.clause}",
            "first {a.clause}, then {b.clause}",
            "after {a.clause}, {b.clause}",
        ),
        overlap=(
            "{a.clause} while {b.clause}",
            "{a.clause} as {b.clause}",
            "{a.noun} together with {b.noun}",
            "while {a.clause}, {b.clause}",
        ),
        foreground=(
            "{a.clause} amidst {b.noun}",
            "{a.clause} with {b.noun} in the background",
        ),
        sequence3=(
            "{a.clause}, then {b.clause}, then {c.clause}",
            "{a.noun} followed by {b.noun} and then {c.noun}",
            "first {a.clause}, then {b.clause}, and then {c.clause}",
            "{a.clause} before {b.clause}, then {c.clause}",
        ),
    ),
    "test": TemplatePool(
        sequence=(
            "{a.clause}, and afterwards {b.clause}",
            "{a.clause}, after which {b.clause}",
            "{a.clause} and subsequently {b.clause}",
            "{a.noun} precedes {b.noun}",
            "{b.noun} follows {a.noun}",
            "{a.noun} gives way to {b.noun}",
            "once {a.clause}, {b.clause}",
            "{a.clause} and later {b.clause}",
        ),
        overlap=(
            "{a.clause} whilst {b.clause}",
            "{a.noun} alongside {b.noun}",
            "{a.clause} at the same time as {b.clause}",
            "{a.noun} simultaneously with {b.noun}",
            "{a.clause}, and meanwhile {b.clause}",
        ),
        foreground=(
            "{a.clause} amid {b.noun}",
            "{a.noun} heard over {b.noun}",
        ),
        sequence3=(
            "{a.clause}, after which {b.clause}, and finally {c.clause}",
            "{a.noun} precedes {b.noun}, and afterwards {c.clause}",
            "{a.clause} and later {b.clause}, and subsequently {c.clause}",
        ),
    ),
}
TEMPLATES["all"] = TemplatePool(
    sequence=TEMPLATES["train"].sequence + TEMPLATES["test"].sequence,
    overlap=TEMPLATES["train"].overlap + TEMPLATES["test"].overlap,
    foreground=TEMPLATES["train"].foreground + TEMPLATES["test"].foreground,
    sequence3=TEMPLATES["train"].sequence3 + TEMPLATES["test"].sequence3,
)


def without_connectives(lexicon: Lexicon) -> Lexicon:
    """The lexicon without synonyms that touch a connective ("while" → "whilst" would leak a test phrasing)."""
    words = {c.phrase for c in CONNECTIVES}
    for pool in TEMPLATES.values():
        for templates in asdict(pool).values():
            for template in templates:
                words.update(part.strip(" ,").lower() for part in template_glue(template))
    synonyms = {
        key: values
        for key, values in lexicon.synonyms.items()
        if key not in words and not any(v in words for v in values)
    }
    return Lexicon(synonyms, dict(lexicon.antonyms), set(lexicon.sound_verbs))


def template_glue(template: str) -> list[str]:
    """The words of a template around its fields: "{a.clause} before {b.clause}" → ["before"]."""
    return [part for part in re.split(r"\{[abc]\.(?:clause|noun)\}", template) if part.strip(" ,")]
