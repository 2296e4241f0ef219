"""Rule-based compositional captions: hard negatives that describe a different scene, paraphrases that don't.

A caption is split at its temporal connectives ("followed by", "before", "after", "then", "while", "as",
"amid", "together with", …) into event segments (``clapkit.compose.composition``). The rules of
``NEGATIVE_RULES`` rewrite that structure:

- ``order_swap``: "A followed by B" → "B followed by A"; "A before B" → "A after B"; 3-event reorders.
- ``relation_swap``: sequence ↔ overlap: "A followed by B" → "A while B"; "A while B" → "A followed by B".
- ``binding_swap``: "a baby cries while a woman laughs" → "a woman cries while a baby laughs";
  "a dog barks loudly, then a bell rings softly" → "a dog barks softly, then a bell rings loudly".
- ``attribute_change``: loud ↔ soft, near ↔ far, fast ↔ slow, … (the lexicon's antonyms).

A rule that does not apply returns nothing rather than a wrong negative, so "a dog barks" has no
negatives. Choices (which connective replaces which) are seeded per caption: the same ``seed`` gives the
same output on every machine. ``paraphrases`` gives meaning-keeping rewrites: mirrored connectives
("A before B" → "B after A"), swapped sides of a symmetric overlap, and lexicon synonyms.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Literal

from clapkit.compose.composition import CONNECTIVES_BY_PHRASE, LEADING_CONNECTIVES, Composition, analyze
from clapkit.compose.lexicon import Lexicon
from clapkit.registry import Registry

__all__ = [
    "NEGATIVE_RULES",
    "compare_compositions",
    "content_words",
    "fix_articles",
    "hard_negatives",
    "paraphrases",
]

_SEQUENCE_TO_OVERLAP = ("while", "as", "together with")
_OVERLAP_TO_SEQUENCE = ("followed by", "before", "then")
_DETERMINERS = frozenset(
    [
        "a",
        "an",
        "the",
        "some",
        "two",
        "three",
        "four",
        "several",
        "many",
        "few",
        "another",
        "its",
        "his",
        "her",
        "their",
        "this",
        "that",
        "these",
        "those",
        "one",
    ]
)
_AUXILIARIES = frozenset(
    ["is", "are", "was", "were", "can", "could", "keeps", "keep", "starts", "start", "begins", "begin"]
)


# ---------------------------------------------------------------------------------------------- word helpers
def _phrase_regex(phrases: Sequence[str]) -> re.Pattern | None:
    if not phrases:
        return None
    alternation = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))
    return re.compile(rf"(?<![\w-])({alternation})(?![\w-])", re.IGNORECASE)


@lru_cache(maxsize=8)
def _regexes(antonyms: tuple[str, ...], synonyms: tuple[str, ...]) -> tuple:
    return _phrase_regex(antonyms), _phrase_regex(synonyms)


def _lexicon_regexes(lexicon: Lexicon) -> tuple[re.Pattern | None, re.Pattern | None, dict[str, tuple[str, bool]]]:
    """(antonym regex, synonym regex, synonym surface form → (lexicon key, plural))."""
    surfaces: dict[str, tuple[str, bool]] = {k: (k, False) for k in lexicon.synonyms}
    for key in lexicon.synonyms:
        plural = _plural(key)
        if " " not in key and not key.endswith("s") and plural not in surfaces:
            surfaces[plural] = (key, True)
    antonym_re, synonym_re = _regexes(tuple(sorted(lexicon.antonyms)), tuple(sorted(surfaces)))
    return antonym_re, synonym_re, surfaces


def _plural(phrase: str) -> str:
    head, _, last = phrase.rpartition(" ")
    if re.search(r"(s|sh|ch|x|z)$", last):
        last += "es"
    elif re.search(r"[^aeiou]y$", last):
        last = last[:-1] + "ies"
    else:
        last += "s"
    return f"{head} {last}" if head else last


_ARTICLE = re.compile(r"\b([Aa]n?)(\s+)([\w-]+)")
_VOWEL_SOUND = re.compile(r"^(?:[aeio]|u(?!ni|se|su|tens)|hour|honest|honou?r|heir)", re.IGNORECASE)


def fix_articles(text: str) -> str:
    """ "a automobile" → "an automobile" after a word was replaced."""

    def fix(match: re.Match) -> str:
        article, space, word = match.groups()
        wanted = "an" if _VOWEL_SOUND.match(word) else "a"
        return _match_case(article, wanted) + space + word

    return _ARTICLE.sub(fix, text)


def _match_case(template: str, word: str) -> str:
    return word[:1].upper() + word[1:] if template[:1].isupper() else word


def _split_subject(segment: str, lexicon: Lexicon) -> tuple[str, str] | None:
    """ "a baby cries loudly" → ("a baby", "cries loudly"); ``None`` without a known sound verb."""
    tokens = segment.split()
    for i in range(1, len(tokens)):
        word = tokens[i].strip(",;:").lower()
        if lexicon.is_verb(word) or word in _AUXILIARIES:
            subject = tokens[:i]
            if all(t.lower() in _DETERMINERS for t in subject):
                continue  # "a ringing phone beeps": "ringing" describes the subject
            return " ".join(subject), " ".join(tokens[i:])
    return None


_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "by",
        "with",
        "from",
        "and",
        "or",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "it",
        "its",
        "this",
        "that",
        "some",
        "there",
        "then",
        "while",
        "as",
        "after",
        "before",
        "followed",
        "preceded",
        "together",
        "along",
        "same",
        "time",
        "sound",
        "sounds",
        "heard",
    ]
)


def _stem(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("ing") and len(word) > 5:
        word = word[:-3]
    elif word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        word = word[:-1]
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def content_words(text: str) -> set[str]:
    """Stemmed content words: "A dog is barking" → {"dog", "bark"}."""
    return {_stem(w) for w in re.findall(r"[a-z][a-z'-]*", text.lower()) if w not in _STOP}


# ---------------------------------------------------------------------------------------------- rules
Rule = Callable[[str, "Composition | None", Lexicon, random.Random], list[str]]
NEGATIVE_RULES: Registry[Rule] = Registry("caption rule")


@NEGATIVE_RULES.register("order_swap")
def order_swap(caption: str, comp: Composition | None, lexicon: Lexicon, rng: random.Random) -> list[str]:
    """Reorder the events of a sequence; for two events also turn the connective around (before → after)."""
    if comp is None or comp.timeline() is None or comp.links[0].relation != "sequence":
        return []
    n = len(comp.segments)
    if n == 2:
        orders = [(1, 0)]
    else:
        reverse = tuple(reversed(range(n)))
        swaps = [(*range(i), i + 1, i, *range(i + 2, n)) for i in range(n - 1)]
        orders = [reverse, *swaps]
    out = [comp.render(segments=[comp.segments[i] for i in order]) for order in orders]
    mirror = comp.links[0].mirror
    if n == 2 and mirror:
        flipped = LEADING_CONNECTIVES[mirror] if comp.leading else CONNECTIVES_BY_PHRASE[mirror]
        out.append(comp.render(links=[flipped]))
    return out


@NEGATIVE_RULES.register("relation_swap")
def relation_swap(caption: str, comp: Composition | None, lexicon: Lexicon, rng: random.Random) -> list[str]:
    """Sequence ↔ overlap for two events: "A followed by B" → "A while B" and back."""
    if comp is None or len(comp.segments) != 2:
        return []
    relation = comp.links[0].relation
    if relation == "sequence":
        choices = ("while", "as") if comp.leading else _SEQUENCE_TO_OVERLAP
    elif relation == "overlap":
        choices = ("after",) if comp.leading else _OVERLAP_TO_SEQUENCE
    else:
        return []
    phrase = rng.choice(choices)
    return [comp.render(links=[LEADING_CONNECTIVES[phrase] if comp.leading else CONNECTIVES_BY_PHRASE[phrase]])]


@NEGATIVE_RULES.register("binding_swap")
def binding_swap(caption: str, comp: Composition | None, lexicon: Lexicon, rng: random.Random) -> list[str]:
    """Swap who does what between two events, or which event carries which attribute."""
    if comp is None or len(comp.segments) != 2:
        return []
    out = []
    first, second = comp.segments
    split = _split_subject(first, lexicon), _split_subject(second, lexicon)
    if split[0] and split[1] and split[0][0].lower() != split[1][0].lower():
        (s0, p0), (s1, p1) = split
        out.append(comp.render(segments=[f"{s1} {p0}", f"{s0} {p1}"]))
    antonym_re = _lexicon_regexes(lexicon)[0]
    if antonym_re is not None:
        found = [list(antonym_re.finditer(s)) for s in comp.segments]
        if len(found[0]) == 1 and len(found[1]) == 1:
            m0, m1 = found[0][0], found[1][0]
            w0, w1 = m0.group().lower(), m1.group().lower()
            if w1 in lexicon.antonyms.get(w0, []):
                new0 = first[: m0.start()] + _match_case(m0.group(), w1) + first[m0.end() :]
                new1 = second[: m1.start()] + _match_case(m1.group(), w0) + second[m1.end() :]
                out.append(comp.render(segments=[new0, new1]))
    return out


@NEGATIVE_RULES.register("attribute_change")
def attribute_change(caption: str, comp: Composition | None, lexicon: Lexicon, rng: random.Random) -> list[str]:
    """Replace one attribute with its opposite (loud → soft); one negative per attribute in the caption."""
    antonym_re = _lexicon_regexes(lexicon)[0]
    if antonym_re is None:
        return []
    out = []
    for match in antonym_re.finditer(caption):
        opposite = rng.choice(lexicon.antonyms[match.group().lower()])
        out.append(caption[: match.start()] + _match_case(match.group(), opposite) + caption[match.end() :])
    return out


def _normal(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9'-]+", text.lower()))


def _rng(seed: int, *parts: str) -> random.Random:
    return random.Random("\x00".join([str(seed), *parts]))  # str seeds hash the same in every process


def _pick(items: list[str], limit: int | None, rng: random.Random) -> list[str]:
    if limit is None or len(items) <= limit:
        return items
    keep = sorted(rng.sample(range(len(items)), limit))
    return [items[i] for i in keep]


def _check_caption(caption: object) -> str:
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"caption {caption!r}: expected a non-empty string")
    return caption


def hard_negatives(
    caption: str,
    *,
    seed: int = 0,
    max_negatives: int | None = None,
    rules: Sequence[str] | None = None,
    lexicon: Lexicon | None = None,
) -> list[str]:
    """Captions that reuse the caption's sounds but describe a different scene.

    Args:
        caption: One caption.
        seed: Seeds every choice (which connective, which subset); same seed → same output.
        max_negatives: Keep at most this many (a seeded subset, in rule order).
        rules: Names from ``NEGATIVE_RULES`` (default: all).
        lexicon: Antonyms and sound verbs (default: ``Lexicon.default()``).

    Returns:
        Distinct negatives, none equal to the caption; empty when no rule applies.
    """
    caption = _check_caption(caption)
    lexicon = lexicon or _default_lexicon()
    comp = analyze(caption)
    seen, out = {_normal(caption)}, []
    for name in rules or NEGATIVE_RULES.names():
        for negative in NEGATIVE_RULES.get(name)(caption, comp, lexicon, _rng(seed, name, caption)):
            negative = fix_articles(negative)
            key = _normal(negative)
            if key not in seen:
                seen.add(key)
                out.append(negative)
    return _pick(out, max_negatives, _rng(seed, "pick", caption))


def paraphrases(
    caption: str, *, seed: int = 0, max_paraphrases: int | None = None, lexicon: Lexicon | None = None
) -> list[str]:
    """Meaning-keeping rewrites: mirrored connectives, swapped symmetric overlaps, lexicon synonyms.

    Args:
        caption: One caption.
        seed: Seeds the synonym choices and the subset.
        max_paraphrases: Keep at most this many.
        lexicon: Synonyms (default: ``Lexicon.default()``).

    Returns:
        Distinct paraphrases, none equal to the caption; empty when nothing applies.
    """
    caption = _check_caption(caption)
    lexicon = lexicon or _default_lexicon()
    rng = _rng(seed, "paraphrase", caption)
    comp = analyze(caption)
    out: list[str] = []
    if comp is not None and len(comp.segments) == 2:
        link = comp.links[0]
        swapped = comp.segments[::-1]
        if link.relation == "sequence" and link.mirror:
            out.append(
                comp.render(
                    swapped, [LEADING_CONNECTIVES[link.mirror] if comp.leading else CONNECTIVES_BY_PHRASE[link.mirror]]
                )
            )
        elif link.relation == "overlap" and link.symmetric:
            out.append(comp.render(swapped))
    _, synonym_re, surfaces = _lexicon_regexes(lexicon)
    if synonym_re is not None:
        matches = list(synonym_re.finditer(caption))

        def substitute(text: str, chosen: list[re.Match]) -> str:
            for match in reversed(chosen):
                key, plural = surfaces[match.group().lower()]
                word = rng.choice(lexicon.synonyms[key])
                word = _match_case(match.group(), _plural(word) if plural else word)
                text = text[: match.start()] + word + text[match.end() :]
            return text

        out += [substitute(caption, [m]) for m in matches]
        if len(matches) > 1:
            out.append(substitute(caption, matches))
    seen, unique = {_normal(caption)}, []
    for text in map(fix_articles, out):
        if _normal(text) not in seen:
            seen.add(_normal(text))
            unique.append(text)
    return _pick(unique, max_paraphrases, rng)


def compare_compositions(
    reference: str, candidate: str, *, lexicon: Lexicon | None = None
) -> Literal["same", "different", "unknown"]:
    """Whether two captions describe the same temporal composition of the same events.

    "different": an attribute turned into its opposite, sequence vs overlap, events reordered, or the same
    words bound differently ("a dog barks while a bell rings" vs "a bell barks while a dog rings").
    "unknown": either caption has no readable structure (no connective, or an "and"). Events are matched by
    their content words, so a paraphrase with synonyms is still recognised as "same" when its order holds.
    """
    lexicon = lexicon or _default_lexicon()
    antonym_re = _lexicon_regexes(lexicon)[0]

    def attributes(text: str) -> set[str]:
        return {m.group().lower() for m in antonym_re.finditer(text)} if antonym_re is not None else set()

    ref_attrs, cand_attrs = attributes(reference), attributes(candidate)
    if any(set(lexicon.antonyms.get(a, ())) & (cand_attrs - ref_attrs) for a in ref_attrs):
        return "different"
    ref, cand = analyze(reference), analyze(candidate)
    ref_time = ref.timeline() if ref else None
    cand_time = cand.timeline() if cand else None
    if ref is None or cand is None or ref_time is None or cand_time is None:
        return "unknown"
    if [len(g) for g in ref_time] != [len(g) for g in cand_time]:
        return "different"  # sequence vs overlap, or a different number of steps
    ref_segments = [frozenset(content_words(s)) for s in ref.segments]
    cand_segments = [frozenset(content_words(s)) for s in cand.segments]
    if set().union(*ref_segments) == set().union(*cand_segments) and sorted(map(sorted, ref_segments)) != sorted(
        map(sorted, cand_segments)
    ):
        return "different"  # the same words, grouped into other events: a binding swap
    ref_events = [set().union(*(ref_segments[i] for i in g)) for g in ref_time]
    cand_events = [set().union(*(cand_segments[i] for i in g)) for g in cand_time]
    for k, mine in enumerate(ref_events):
        scores = [_jaccard(mine, theirs) for theirs in cand_events]
        if max(scores) > scores[k]:  # event k of the reference is described at another step
            return "different"
    for ref_group, cand_group in zip(ref_time, cand_time):
        mine = set().union(*(attributes(ref.segments[i]) for i in ref_group))
        theirs = set().union(*(attributes(cand.segments[i]) for i in cand_group))
        if theirs and theirs != mine:  # an attribute moved to another event ("softly" bound to B, not A)
            return "different"
    return "same"


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


@lru_cache(maxsize=1)
def _default_lexicon() -> Lexicon:
    return Lexicon.default()
