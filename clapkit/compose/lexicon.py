"""Word lists for caption rewriting: meaning-keeping synonyms, attribute antonyms and sound verbs.

The packaged defaults live in ``resources/lexicon.json``; extend them with your own file or dict::

    lex = Lexicon.default().extend({"synonyms": {"kettle": ["teapot"]}, "antonyms": {"muffled": ["clear"]}})
    lex = Lexicon.default().extend("my_lexicon.json")   # same three sections, any of them optional

- ``synonyms``: word or phrase → replacements that keep the meaning (paraphrase positives). One direction:
  list both ways if both hold.
- ``antonyms``: attribute word or phrase → opposites (attribute-change and binding-swap negatives). Stored
  both ways.
- ``sound_verbs``: base forms of verbs that describe sounds; their -s and -ing forms are derived. They split
  a clause into its subject and what the subject does (binding swaps).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["Lexicon", "verb_forms"]

_SECTIONS = ("synonyms", "antonyms", "sound_verbs")


def _third_person(verb: str) -> str:
    if re.search(r"(s|sh|ch|x|z|o)$", verb):
        return verb + "es"
    if re.search(r"[^aeiou]y$", verb):
        return verb[:-1] + "ies"
    return verb + "s"


def _gerund(verb: str) -> str:
    if verb.endswith("ie"):
        return verb[:-2] + "ying"
    if verb.endswith("e") and not verb.endswith(("ee", "ye", "oe")):
        return verb[:-1] + "ing"
    # One-syllable consonant-vowel-consonant verbs double the last letter: hum → humming, tap → tapping.
    if len(re.findall(r"[aeiou]+", verb)) == 1 and re.search(r"[^aeiou][aeiou][^aeiouwxy]$", verb):
        return verb + verb[-1] + "ing"
    return verb + "ing"


def verb_forms(verb: str) -> set[str]:
    """``bark`` → {bark, barks, barking, barked}; good enough for the regular verbs of sound."""
    past = verb + "d" if verb.endswith("e") else (verb[:-1] + "ied" if re.search(r"[^aeiou]y$", verb) else verb + "ed")
    return {verb, _third_person(verb), _gerund(verb), past}


def _clean_map(section: str, raw: Any) -> dict[str, list[str]]:
    if not isinstance(raw, Mapping):
        raise ValueError(f"lexicon section {section!r}: expected a mapping of word → list of words, got {type(raw)}")
    out: dict[str, list[str]] = {}
    for key, values in raw.items():
        if isinstance(values, str):
            values = [values]
        if not isinstance(key, str) or not key.strip() or not all(isinstance(v, str) and v.strip() for v in values):
            raise ValueError(f"lexicon section {section!r}: entry {key!r}: {values!r} must map a word to words")
        out[key.strip().lower()] = [v.strip().lower() for v in values]
    return out


@dataclass
class Lexicon:
    """Synonyms, antonyms and sound verbs (all lower case)."""

    synonyms: dict[str, list[str]] = field(default_factory=dict)
    antonyms: dict[str, list[str]] = field(default_factory=dict)
    sound_verbs: set[str] = field(default_factory=set)

    @classmethod
    def default(cls) -> Lexicon:
        """The packaged lexicon (``clapkit/compose/resources/lexicon.json``)."""
        text = resources.files("clapkit.compose").joinpath("resources/lexicon.json").read_text(encoding="utf-8")
        return cls().extend(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> Lexicon:
        """A lexicon from one JSON file (without the packaged defaults)."""
        return cls().extend(path)

    def extend(self, more: Mapping[str, Any] | str | Path) -> Lexicon:
        """A new lexicon with ``more`` (a dict or JSON file with any of the three sections) merged in."""
        if isinstance(more, (str, Path)):
            path = Path(more)
            try:
                more = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(f"{path}: cannot read lexicon JSON ({err})") from err
        unknown = set(more) - set(_SECTIONS)
        if unknown:
            raise ValueError(f"lexicon: unknown sections {sorted(unknown)}; valid: {', '.join(_SECTIONS)}")
        synonyms = {k: list(v) for k, v in self.synonyms.items()}
        for key, values in _clean_map("synonyms", more.get("synonyms", {})).items():
            synonyms[key] = list(dict.fromkeys(synonyms.get(key, []) + values))
        antonyms = {k: list(v) for k, v in self.antonyms.items()}
        for key, values in _clean_map("antonyms", more.get("antonyms", {})).items():
            for a, b in [(key, v) for v in values] + [(v, key) for v in values]:
                antonyms[a] = list(dict.fromkeys([*antonyms.get(a, []), b]))
        verbs = set(self.sound_verbs)
        raw_verbs = more.get("sound_verbs", [])
        if isinstance(raw_verbs, str) or not isinstance(raw_verbs, Iterable):
            raise ValueError("lexicon section 'sound_verbs': expected a list of verbs")
        for verb in raw_verbs:
            verbs |= verb_forms(str(verb).strip().lower())
        return Lexicon(synonyms, antonyms, verbs)

    def is_verb(self, word: str) -> bool:
        return word.lower() in self.sound_verbs
