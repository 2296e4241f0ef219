"""LLM caption writer: parsing, validation table, on-disk cache, and a real (tiny, random) Llama."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from clapkit.compose.llm import (
    DEFAULT_PROMPTS,
    GenerationCache,
    LLMCaptionWriter,
    PromptTemplate,
    parse_completion,
    validate,
)

CAPTION = "A dog barks followed by a car horn honking."

# candidate → the reason it is rejected (None = kept), for each kind.
NEGATIVE_CASES = {
    "A car horn honks followed by a dog barks.": None,
    "A dog barks while a car horn honks.": None,
    "A dog barks, then a car horn honks": "not a different scene",
    "a dog barks followed by a car horn honking": "echo or duplicate",
    "A door slams, then a bell rings.": "copied example",
    "A cat sleeps on the sofa.": "different sounds",
    "A dog barks and a car horn honks": "unreadable structure",
    "A dog <barks> followed by {a car horn}": "odd characters",
    "Dog": "length",
}
POSITIVE_CASES = {
    "A car horn honks after a dog barks.": None,
    "A hound yaps followed by a car horn honking.": None,
    "A car horn honks followed by a dog barks.": "changes the scene",
    "A dog barks and a car horn honks": "loses the order",
    "A cat meows followed by a bird chirping.": "different sounds",
}


@pytest.mark.parametrize(("kind", "cases"), [("negatives", NEGATIVE_CASES), ("positives", POSITIVE_CASES)])
def test_validation_table(kind, cases):
    counts = Counter()
    kept = validate(CAPTION, list(cases), kind, banned=DEFAULT_PROMPTS.examples(), counts=counts)
    assert kept == [c for c, reason in cases.items() if reason is None]
    assert counts == Counter(reason for reason in cases.values() if reason)


def test_parse_completion_stops_at_the_next_example():
    text = '- "A bell rings."\n2) A door slams\n* A cat meows.\n\nCaption: something else\n- ignored'
    assert parse_completion(text) == ["A bell rings.", "A door slams", "A cat meows."]
    assert parse_completion("\n\n1. First one\nCaption: x:\n- no") == ["First one"]
    assert parse_completion("") == []


class FakeLM:
    """Deterministic completions that count how often they are asked."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def __call__(self, prompts: list[str]) -> list[str]:
        self.prompts += prompts
        return ["- A car horn honks followed by a dog barks.\n- A dog barks followed by a car horn honking.\n"] * len(
            prompts
        )


def test_each_caption_is_generated_once(tmp_path):
    fake = FakeLM()
    writer = LLMCaptionWriter(complete=fake, model_id="fake", cache=tmp_path / "cache.sqlite")
    out = writer.generate([CAPTION, CAPTION, "A bell rings, then a dog barks."], "negatives")
    assert len(fake.prompts) == 2 and CAPTION in fake.prompts[0]
    assert out[0] == out[1] == ["A car horn honks followed by a dog barks."]
    assert writer.stats["echo or duplicate"] == 2 and writer.stats["generated"] == 2
    # A new writer on the same cache file asks the LM nothing.
    again = LLMCaptionWriter(complete=fake, model_id="fake", cache=tmp_path / "cache.sqlite")
    assert again.negatives(CAPTION) == out[0] and len(fake.prompts) == 2
    assert len(GenerationCache(tmp_path / "cache.sqlite")) == 2
    # Another prompt template or model is another cache entry.
    prompts = PromptTemplate(negatives="Swap the events: {caption}\n")
    LLMCaptionWriter(complete=fake, model_id="fake", cache=again.cache, prompts=prompts).negatives(CAPTION)
    LLMCaptionWriter(complete=fake, model_id="other", cache=again.cache).negatives(CAPTION)
    assert len(fake.prompts) == 4


def test_bad_arguments():
    with pytest.raises(ValueError, match="complete"):
        LLMCaptionWriter()
    with pytest.raises(ValueError, match="caption"):
        PromptTemplate(positives="no placeholder")
    writer = LLMCaptionWriter(complete=FakeLM())
    with pytest.raises(ValueError, match="kind"):
        writer.generate([CAPTION], "paraphrases")
    with pytest.raises(ValueError, match="captions\\[1\\]"):
        writer.generate([CAPTION, " "], "negatives")
    with pytest.raises(ValueError, match="expected 1 strings"):
        LLMCaptionWriter(complete=lambda prompts: []).negatives(CAPTION)


def tiny_llama():
    """A random 2-layer Llama with a word-level tokenizer over the prompts' words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = sorted(set((DEFAULT_PROMPTS.negatives + DEFAULT_PROMPTS.positives + CAPTION).replace(".", " . ").split()))
    vocab = {"[UNK]": 0, "[PAD]": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval(), tokenizer


def test_real_causal_lm_generates_validates_and_caches(tmp_path):
    model, tokenizer = tiny_llama()
    writer = LLMCaptionWriter(model, tokenizer, model_id="tiny", cache=tmp_path / "c.sqlite", max_new_tokens=12)
    prompts = [DEFAULT_PROMPTS.render("negatives", CAPTION), DEFAULT_PROMPTS.render("positives", CAPTION)]
    raw = writer._run(prompts)
    assert len(raw) == 2 and all(isinstance(t, str) and t.strip() for t in raw)
    assert writer._run(prompts) == raw  # greedy decoding: reproducible
    assert tokenizer.padding_side == "right"  # left padding was only for generation
    negatives = writer.negatives(CAPTION)
    positives = writer.positives(CAPTION)
    assert isinstance(negatives, list) and isinstance(positives, list)
    for text in negatives:  # whatever a random model writes, only valid lines come back
        assert validate(CAPTION, [text], "negatives") == [text]
    assert len(writer.cache) == 2

    def refuse(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    model.generate = refuse
    assert (
        LLMCaptionWriter(model, tokenizer, model_id="tiny", cache=writer.cache, max_new_tokens=12).negatives(CAPTION)
        == negatives
    )


def test_cli_adds_validated_llm_captions_to_a_listing(tmp_path, monkeypatch, capsys):
    from clapkit import cli

    fake = FakeLM()
    made: list[LLMCaptionWriter] = []

    def smollm2(device=None, **kwargs):  # the packaged model's loader, replaced by the fake LM with the CLI's options
        made.append(LLMCaptionWriter(complete=fake, model_id="fake", **kwargs))
        return made[-1]

    monkeypatch.setattr(LLMCaptionWriter, "smollm2", staticmethod(smollm2))
    listing = tmp_path / "clips.jsonl"
    rows = [
        {"audio": "a.wav", "captions": [CAPTION], "negatives": ["silence"]},
        {"audio": "b.wav", "caption": "A bell rings, then a dog barks."},
    ]
    listing.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, cache = tmp_path / "out.jsonl", tmp_path / "cache.sqlite"
    argv = ["llm-captions", str(listing), "--kind", "negatives", "--out", str(out), "--cache", str(cache)]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    # Kept: what validation passes, after the record's own negatives; the echo of the input is dropped.
    assert written[0]["negatives"] == ["silence", "A car horn honks followed by a dog barks."]
    assert written[0]["audio"] == "a.wav" and written[0]["captions"] == [CAPTION]
    assert summary["generated"] == 2 and summary["added"] == sum(len(r["negatives"]) for r in written) - 1
    assert len(fake.prompts) == 2
    # Rerun: every completion comes from the cache.
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["cached"] == 2 and len(fake.prompts) == 2
    # --limit 1: only the first record goes to the LLM (from the cache); the second is copied as it was.
    limited = tmp_path / "limited.jsonl"
    assert cli.main([*argv[:5], str(limited), *argv[6:], "--limit", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sent"] == 1 and summary["captions"] == 2
    assert [json.loads(line) for line in limited.read_text().splitlines()] == [written[0], rows[1]]
    assert cli.main([*argv, "--limit", "-1"]) == 2 and "--limit -1" in capsys.readouterr().err
    # A broken listing is refused, naming the line; nothing is written.
    listing.write_text(json.dumps(rows[0]) + "\n{not json\n")
    out.unlink()
    assert cli.main([*argv[:1], str(listing), *argv[2:]]) == 2
    assert f"{listing}:2: not valid JSON" in capsys.readouterr().err and not out.exists()
    (tmp_path / "empty.txt").write_text("\n")
    assert cli.main(["llm-captions", str(tmp_path / "empty.txt"), "--out", str(out)]) == 2
