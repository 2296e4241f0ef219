"""Rule-based negatives and paraphrases, checked against a table of captions."""

from __future__ import annotations

import pytest

from clapkit.compose import NEGATIVE_RULES, Lexicon, analyze, compare_compositions, hard_negatives, paraphrases

# caption → negatives every seed must produce (exact text), by rule.
NEGATIVE_TABLE = {
    "A dog barks followed by a car horn honking.": {
        "order_swap": ["A car horn honking followed by a dog barks.", "A dog barks preceded by a car horn honking."],
        "binding_swap": ["A car horn barks followed by a dog honking."],
    },
    "A bell rings before a door slams": {
        "order_swap": ["A door slams before a bell rings", "A bell rings after a door slams"],
        "binding_swap": ["A door rings before a bell slams"],
    },
    "After a bell rings, a door slams.": {
        "order_swap": ["After a door slams, a bell rings.", "Before a bell rings, a door slams."],
    },
    "A baby cries while a woman laughs.": {
        "binding_swap": ["A woman cries while a baby laughs."],
    },
    "First a man speaks, then a dog barks, then a car passes by.": {
        "order_swap": [
            "First a car passes by, then a dog barks, then a man speaks.",
            "First a dog barks, then a man speaks, then a car passes by.",
            "First a man speaks, then a car passes by, then a dog barks.",
        ],
    },
    "A dog barks loudly, then a bell rings softly.": {
        "binding_swap": [
            "A dog barks softly, then a bell rings loudly.",
            "A bell barks loudly, then a dog rings softly.",
        ],
        "order_swap": ["A bell rings softly, then a dog barks loudly."],
    },
    "A loud siren wails in the distance": {
        "attribute_change": ["A loud siren wails nearby"],
    },
    "A train passes slowly as birds chirp": {
        "attribute_change": ["A train passes quickly as birds chirp"],
        "binding_swap": ["Birds passes slowly as a train chirp"],
    },
}
# relation_swap picks its connective by seed: only the relation it lands on is fixed.
RELATION_TABLE = {
    "A dog barks followed by a car horn honking.": ("while", "as", "together with"),
    "A baby cries while a woman laughs.": ("followed by", "before", "then"),
    "Rain falls as thunder rumbles in the distance.": ("followed by", "before", "then"),
}
# Captions with no rule that applies: no negatives at all.
NO_NEGATIVES = [
    "A dog barks",
    "Rain",
    "It sounds as if a dog barks",
    "A man and a woman talk while a dog barks",  # "and" splits a subject: the structure is not readable
    "Birds chirp as well as a dog barks",
]
# caption → paraphrases that must be among the output.
POSITIVE_TABLE = {
    "A bell rings before a door slams": ["A door slams after a bell rings"],
    "A door slams after a bell rings": ["A bell rings before a door slams"],
    "A baby cries while a woman laughs.": ["A woman laughs while a baby cries."],
    "A dog barks followed by a car horn honking.": ["A car horn honking preceded by a dog barks."],
    "A train passes": ["A railcar passes", "A locomotive passes"],
}


@pytest.mark.parametrize("caption", list(NEGATIVE_TABLE))
def test_rules_produce_the_expected_negatives(caption):
    for rule, expected in NEGATIVE_TABLE[caption].items():
        for seed in (0, 1):
            got = hard_negatives(caption, rules=[rule], seed=seed)
            assert set(expected) <= set(got), (rule, got)
    everything = hard_negatives(caption)
    assert caption not in everything and len(set(everything)) == len(everything)
    for negative in everything:
        assert compare_compositions(caption, negative) == "different", negative


@pytest.mark.parametrize(("caption", "choices"), list(RELATION_TABLE.items()))
def test_relation_swap_changes_sequence_and_overlap(caption, choices):
    outputs = {tuple(hard_negatives(caption, rules=["relation_swap"], seed=s)) for s in range(8)}
    assert len(outputs) > 1  # the seed matters
    for (negative,) in outputs:
        assert any(f" {c} " in negative or f", {c} " in negative for c in choices), negative
        assert compare_compositions(caption, negative) == "different"


@pytest.mark.parametrize("caption", NO_NEGATIVES)
def test_no_rule_no_negative(caption):
    assert hard_negatives(caption) == []


def test_overlap_order_is_not_a_negative():
    negatives = hard_negatives("A baby cries while a woman laughs.")
    assert "A woman laughs while a baby cries." not in negatives
    assert "A woman laughs while a baby cries." in paraphrases("A baby cries while a woman laughs.")


def test_negatives_are_deterministic_per_seed_and_capped():
    caption = "A dog barks loudly, then a bell rings softly."
    assert hard_negatives(caption, seed=3) == hard_negatives(caption, seed=3)
    capped = hard_negatives(caption, seed=3, max_negatives=2)
    full = hard_negatives(caption, seed=3)
    assert len(capped) == 2 and all(c in full for c in capped)
    assert capped == hard_negatives(caption, seed=3, max_negatives=2)


@pytest.mark.parametrize("caption", list(POSITIVE_TABLE))
def test_paraphrases_table(caption):
    got = paraphrases(caption, seed=0) + paraphrases(caption, seed=1) + paraphrases(caption, seed=2)
    for expected in POSITIVE_TABLE[caption]:
        assert expected in got, got
    for positive in got:
        assert compare_compositions(caption, positive) in ("same", "unknown"), positive


def test_paraphrases_fix_articles_and_plurals():
    lex = Lexicon().extend({"synonyms": {"car": ["automobile"], "dog": ["puppy"]}})
    got = paraphrases("A car passes while dogs bark", lexicon=lex, seed=0)
    assert any("an automobile" in p or "An automobile" in p for p in got), got
    assert not any("a automobile" in p.lower() for p in got)
    assert any("puppies bark" in p for p in got), got


def test_user_lexicon_extends_rules(tmp_path):
    caption = "A muffled voice speaks"
    assert hard_negatives(caption) == []
    path = tmp_path / "lex.json"
    path.write_text('{"antonyms": {"muffled": ["clear"]}}')
    lex = Lexicon.default().extend(path)
    assert hard_negatives(caption, lexicon=lex) == ["A clear voice speaks"]
    assert "loud" in lex.antonyms and "clear" in lex.antonyms["muffled"] and "muffled" in lex.antonyms["clear"]


def test_bad_inputs():
    with pytest.raises(ValueError, match="caption"):
        hard_negatives("   ")
    with pytest.raises(ValueError, match="unknown sections"):
        Lexicon.default().extend({"synonym": {}})
    with pytest.raises(KeyError, match="order_swap"):
        hard_negatives("A dog barks then a cat meows", rules=["reverse"])


def test_analyze_reads_the_timeline():
    assert analyze("A dog barks").__class__ is type(None)
    assert analyze("A bell rings before a door slams").timeline() == [[0], [1]]
    assert analyze("A door slams after a bell rings").timeline() == [[1], [0]]
    assert analyze("A baby cries while a woman laughs").timeline() == [[0, 1]]
    assert analyze("A man talks and a dog barks").timeline() is None
    assert set(NEGATIVE_RULES.names()) == {"attribute_change", "binding_swap", "order_swap", "relation_swap"}
