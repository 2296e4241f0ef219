"""LALM metrics on hand-built cases."""

from __future__ import annotations

import json

import jiwer
import pytest
import soundfile as sf

from clapkit.lalm.evaluate import (
    abstention_rate,
    cer,
    contains_match,
    exact_match,
    extract_choice,
    extract_label,
    is_abstention,
    label_accuracy,
    mc_prompt,
    multiple_choice_accuracy,
    predict,
    read_mmau,
    score,
    wer,
)
from tests.lalm.conftest import make_lalm, tone

CHOICES = ["dog", "dog barking", "cat meowing", "rain"]


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("(B)", 1),
        ("B", 1),
        ("C. cat meowing", 2),
        ("The answer is D.", 3),
        ("option C", 2),
        ("The answer is a dog barking.", 1),  # the article "a" is not option A
        ("Dog barking", 1),
        ("I hear a dog barking in the distance.", 1),  # "dog" is inside "dog barking": the longer option wins
        ("It sounds like rain on a roof.", 3),
        ("Either a cat meowing or rain.", None),  # two unrelated options named: ambiguous
        ("I cannot tell.", None),
        ("A hot dog stand", 0),
        ("raining", None),  # whole words only
    ],
)
def test_extract_choice(prediction, expected):
    assert extract_choice(prediction, CHOICES) == expected


def test_mc_prompt_letters_the_options():
    assert (
        mc_prompt("What is it?", ["a", "b"])
        == "What is it?\nChoices:\n(A) a\n(B) b\nAnswer with the text of one choice."
    )


def test_multiple_choice_accuracy():
    preds = ["(A)", "dog barking", "I am not sure", "rain"]
    answers = ["dog", "B", "rain", 2]  # text, letter, text, index
    out = multiple_choice_accuracy(preds, [CHOICES] * 4, answers)
    assert out == {"accuracy": 0.5, "unparsed": 0.25, "n": 4}
    with pytest.raises(ValueError, match="not one of the choices"):
        multiple_choice_accuracy(["(A)"], [CHOICES], ["horse"])


def test_wer_counts_substitutions_insertions_and_deletions():
    assert wer(["the cat sat"], ["the cat sit"]) == pytest.approx(1 / 3)  # 1 substitution
    assert wer(["the cat sat"], ["the black cat sat"]) == pytest.approx(1 / 3)  # 1 insertion
    assert wer(["the cat sat"], ["the sat"]) == pytest.approx(1 / 3)  # 1 deletion
    # 1 substitution (sat → sit) + 1 deletion (the) over 6 reference words; case and punctuation are ignored.
    assert wer(["The cat sat on the mat."], ["the cat sit on mat"]) == pytest.approx(2 / 6)


def test_error_rates_are_corpus_level():
    # 0 + 2 edits over 2 + 3 words = 0.4; the mean of the per-utterance rates would be (0 + 2/3) / 2 ≈ 0.33.
    assert wer(["a b", "c d e"], ["a b", "c x"]) == pytest.approx(2 / 5)
    # 1 edit over 1 + 9 characters = 0.1, not the mean (1/1 + 0) / 2.
    assert cer(["a", "long word"], ["b", "long word"]) == pytest.approx(1 / 10)


def test_cer_counts_characters_and_spaces():
    assert cer(["abcd"], ["abed"]) == pytest.approx(1 / 4)  # substitution
    assert cer(["abcd"], ["abxcd"]) == pytest.approx(1 / 4)  # insertion
    assert cer(["abcd"], ["abd"]) == pytest.approx(1 / 4)  # deletion
    assert cer(["ab cd"], ["abcd"]) == pytest.approx(1 / 5)  # the space counts
    assert cer(["Ab,  cd!"], ["ab cd"]) == 0.0  # normalised first: case, punctuation, runs of spaces


def test_empty_references():
    # An empty reference among others: its hypothesis words are insertions against the corpus total.
    assert wer(["", "a b"], ["x", "a b"]) == pytest.approx(1 / 2)
    for refs in ([""], ["", " ... "]):  # nothing to score against, even after normalisation
        with pytest.raises(ValueError, match="references are empty"):
            wer(refs, ["x"] * len(refs))
    with pytest.raises(ValueError, match="2 references and 1 hypotheses"):
        cer(["a", "b"], ["a"])


def test_error_rates_are_jiwers_on_normalised_text(monkeypatch):
    seen = []
    monkeypatch.setattr(jiwer, "wer", lambda refs, hyps: seen.append((refs, hyps)) or 0.25)
    assert wer(["Hello,  World!"], ["hello world"]) == 0.25
    assert seen == [(["hello world"], ["hello world"])]


def test_abstention_exact_and_contains():
    assert is_abstention("I'm sorry, I cannot determine that.")
    assert is_abstention("")
    assert is_abstention("I can’t tell, I don’t know.")
    assert is_abstention("Maybe a horse?", CHOICES)  # a closed question answered with no option
    assert not is_abstention("A dog.", CHOICES)
    assert not is_abstention("Rain falls.")
    assert abstention_rate(["Unable to tell.", "(A)", "no idea really"], [CHOICES] * 3) == pytest.approx(2 / 3)
    assert exact_match(["Dog.", "a cat"], ["dog", "cat"]) == 0.5
    assert contains_match(["It is a dog barking.", "hotdog"], ["dog", "dog"]) == 0.5


def test_score_groups_by_kind_and_group():
    records = [
        {"kind": "mc", "prediction": "(A)", "answer": "dog", "choices": CHOICES, "group": "sound"},
        {"kind": "mc", "prediction": "cat meowing", "answer": "rain", "choices": CHOICES, "group": "music"},
        {"kind": "asr", "prediction": "hello world", "answer": "Hello, world!"},
        {"kind": "label", "prediction": "A dog barks.", "answer": "dog"},
        {"kind": "open", "prediction": "Something.", "answer": None},
    ]
    out = score(records)
    assert out["mc"]["accuracy"] == 0.5 and out["mc"]["groups"]["sound"]["accuracy"] == 1.0
    assert out["mc"]["groups"]["music"]["accuracy"] == 0.0
    assert out["asr"] == {"wer": 0.0, "cer": 0.0, "n": 1}
    assert out["label"]["exact_match"] == 0.0 and out["label"]["contains"] == 1.0
    assert out["open"] == {"n": 1}
    with pytest.raises(ValueError, match="valid kinds"):
        score([{"kind": "bleu", "prediction": "x"}])
    with pytest.raises(ValueError, match="needs 'choices'"):
        score([{"kind": "mc", "prediction": "x", "answer": "y"}])


def test_predict_on_mmau_file(tmp_path):
    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "q1.wav", tone(440, 0.5).numpy(), 16000)
    items = [
        {"id": "q1", "audio_id": "audio/q1.wav", "question": "What is it?", "choices": ["tone", "dog"],
         "answer": "tone", "task": "sound"},
    ] * 3  # fmt: skip
    (tmp_path / "mmau.json").write_text(json.dumps(items))
    samples = list(read_mmau(tmp_path / "mmau.json", 16000))
    assert "(A) tone\n(B) dog" in samples[0].messages[0]["content"]
    assert samples[0].messages[0]["content"].startswith("<Audio>\n")
    model = make_lalm("linear")
    records = predict(model, iter(samples), batch_size=2, limit=2, max_new_tokens=3)
    assert len(records) == 2
    assert records[0]["kind"] == "mc" and records[0]["group"] == "sound" and records[0]["answer"] == "tone"
    assert score(records)["mc"]["n"] == 2


def test_extract_label_over_a_closed_label_set():
    aliases = {"dog": ["a puppy", "barking"], "cat": ["meowing", "a kitten"], "drum_kit": ["a drummer"], "bell": []}
    assert extract_label("A puppy is barking.", aliases) == "dog"
    assert extract_label("It sounds like a drum kit", aliases) == "drum_kit"  # underscores read as spaces
    assert extract_label("Bells", aliases) is None  # whole words only
    assert extract_label("a puppy and a kitten", aliases) is None  # two labels: unparsed
    shared = {"water": ["water flows"], "splash": ["water", "water splashes"]}
    assert extract_label("water", shared) is None  # named by both labels
    assert extract_label("Water splashes.", shared) == "splash"
    result = label_accuracy(["A puppy.", "a bell rings", "hmm"], ["dog", "cat", "bell"], aliases)
    assert result == {"accuracy": 1 / 3, "unparsed": 1 / 3, "n": 3}
    with pytest.raises(ValueError, match="not in the label set"):
        label_accuracy(["x"], ["cow"], aliases)
