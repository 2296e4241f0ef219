"""How the scene composer's captions name events and the attributes bound to them.

An event is named by an ``EventPhrase`` (subject + verb + gerund: "a dog" / "barks" / "barking") from the packaged
table (``resources/events.json``) or the caller; templates see it as a ``Said`` — the phrase plus the adverb of the
attribute bound to it ("a dog barks loudly", "a bell ringing slowly"). ``ATTRIBUTES`` lists, per attribute
dimension, the two opposite attributes and their adverbs; every adverb is in the lexicon's antonyms, so the
rule-based negatives and ``compare_compositions`` understand the captions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from clapkit.compose.captions import fix_articles

__all__ = ["ATTRIBUTES", "EventPhrase", "Said", "bind_swapped", "phrase_for", "render"]


@dataclass(frozen=True)
class EventPhrase:
    """How captions name one event: subject + verb ("a dog" "barks") and the verb's -ing form ("barking")."""

    subject: str
    verb: str
    gerund: str


@dataclass(frozen=True)
class Said:
    """An event as templates see it: ``{a.clause}`` = "a dog barks loudly", ``{a.noun}`` = "a dog barking loudly"."""

    phrase: EventPhrase
    adverb: str = ""

    @property
    def clause(self) -> str:
        return " ".join(x for x in (self.phrase.subject, self.phrase.verb, self.adverb) if x)

    @property
    def noun(self) -> str:
        return " ".join(x for x in (self.phrase.subject, self.phrase.gerund, self.adverb) if x)


#: Scene kind → its attribute dimension's two opposite (attribute, adverb) pairs. ``attribute`` scenes bind
#: loudness (a level difference in LU), ``rate`` scenes bind repetition rate (a short unit repeated fast or slow).
ATTRIBUTES: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "attribute": (("loud", "loudly"), ("soft", "softly")),
    "rate": (("fast", "rapidly"), ("slow", "slowly")),
}


@lru_cache(maxsize=1)
def _event_table() -> dict[str, EventPhrase]:
    text = resources.files("clapkit.compose").joinpath("resources/events.json").read_text(encoding="utf-8")
    return {k: EventPhrase(*v) for k, v in json.loads(text)["events"].items()}


def phrase_for(label: str) -> EventPhrase:
    """The packaged phrase for a label ("dog" → "a dog" / "barks" / "barking"), else "a <label> sound plays"."""
    key = " ".join(label.replace("_", " ").replace("-", " ").lower().split())
    return _event_table().get(key) or EventPhrase(f"a {key} sound", "plays", "playing")


def render(template: str, *events: Said) -> str:
    """``template`` with ``{a}``, ``{b}``, ``{c}`` filled by ``events``, capitalised, articles fixed."""
    text = template.format(**dict(zip("abc", events)))
    return fix_articles(text[:1].upper() + text[1:])


def bind_swapped(a: Said, b: Said) -> tuple[Said, Said] | None:
    """Swap who does what: "a dog barks" / "a bell rings" → "a bell barks" / "a dog rings" (None: no difference)."""
    if a.phrase.subject == b.phrase.subject or a.phrase.verb == b.phrase.verb:
        return None
    swap_a = EventPhrase(b.phrase.subject, a.phrase.verb, a.phrase.gerund)
    swap_b = EventPhrase(a.phrase.subject, b.phrase.verb, b.phrase.gerund)
    return Said(swap_a, a.adverb), Said(swap_b, b.adverb)
