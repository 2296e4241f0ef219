"""The text QA set, choice scoring, self-replay data, LoRA scaling and weight interpolation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clapkit.lalm.forgetting import (
    choice_scores,
    interpolate_llm,
    llm_state,
    load_text_qa,
    scale_lora,
    self_replay_conversations,
    text_qa_metrics,
)
from clapkit.lalm.stages import configure_stage
from tests.lalm.conftest import make_lalm

ITEMS = [
    {"question": "What is 2 plus 2?", "choices": ["4", "5", "3"], "answer": "4"},
    {"question": "Which season comes after winter?", "choices": ["autumn", "spring"], "answer": "spring"},
]


def _soft(x: list[float]) -> np.ndarray:
    e = np.exp(np.array(x) - max(x))
    return e / e.sum()


def test_the_shipped_set_loads_and_splits() -> None:
    every = load_text_qa()
    evaluation, replay = load_text_qa(split="eval"), load_text_qa(split="replay")
    assert len(every) == len(evaluation) + len(replay) == 124 and len(evaluation) == 93
    assert not {i["question"] for i in evaluation} & {i["question"] for i in replay}
    assert all(len(i["choices"]) == 4 and i["answer"] in i["choices"] for i in every)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{broken", "bad.jsonl:2: not JSON"),
        ('{"question": "q", "choices": ["a", "a"], "answer": "a"}', "bad.jsonl:2: choices must be"),
        ('{"question": "q", "choices": ["a", "b"], "answer": "c"}', "bad.jsonl:2: answer 'c' is not one"),
        ('["not", "an", "object"]', "bad.jsonl:2: expected an object"),
        ('{"question": "q", "choices": ["a", 3], "answer": "a"}', "bad.jsonl:2: choices must be"),
        ('{"question": "", "choices": ["a", "b"], "answer": "a"}', "bad.jsonl:2: question must be"),
    ],
)
def test_malformed_lines_are_named(tmp_path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ITEMS[0]) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=message):
        load_text_qa(path)


def test_choice_scores_are_the_mean_log_probability_of_each_reply() -> None:
    model = make_lalm()
    scores = choice_scores(model, ITEMS, batch_size=2)
    assert scores.shape == (2, 3) and np.isneginf(scores[1, 2]) and np.isfinite(scores[:, :2]).all()
    # The first choice of the first item, scored by hand through the chat formatter and the LLM.
    enc = model.formatter.encode(
        [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "4"}]
    )
    ids = torch.tensor([enc.input_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model.llm(input_ids=ids).logits[0, :-1].float(), -1)
    targets = torch.tensor(enc.labels[1:])
    keep = targets != -100
    by_hand = logp[keep].gather(-1, targets[keep].unsqueeze(-1)).mean().item()
    assert scores[0, 0] == pytest.approx(by_hand, abs=1e-4)

    shown = choice_scores(model, ITEMS, show_choices=True, batch_size=2)  # the question asked with its choices
    assert shown.shape == scores.shape and not np.allclose(shown[:, :2], scores[:, :2])

    metrics = text_qa_metrics(scores, ITEMS, reference=scores)
    assert metrics["kl_to_reference"] == pytest.approx(0.0) and metrics["agreement"] == 1.0
    assert metrics["chance"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    fixed = np.array([[0.0, -1.0, -2.0], [-5.0, 0.0, -np.inf]])  # picks "4" and "spring": both right
    assert text_qa_metrics(fixed, ITEMS)["accuracy"] == 1.0
    other = np.array([[0.0, -1.0, -2.0], [0.0, -5.0, -np.inf]])  # agrees on the first item only
    drift = text_qa_metrics(fixed, ITEMS, reference=other)
    assert drift["agreement"] == 0.5 and drift["kl_to_reference"] == pytest.approx(
        0.5 * sum(p * (np.log(p) - np.log(q)) for p, q in zip(_soft([0.0, -5.0]), _soft([-5.0, 0.0])))
    )
    with pytest.raises(ValueError, match="do not match"):
        text_qa_metrics(fixed, ITEMS, reference=fixed[:1])


def test_self_replay_is_the_model_answering_its_own_prompts() -> None:
    model = make_lalm()
    conversations = self_replay_conversations(model, ITEMS, max_new_tokens=4)
    assert len(conversations) == 2
    for conv, item in zip(conversations, ITEMS):
        assert conv[0]["role"] == "user" and item["question"] in conv[0]["content"]
        assert conv[1]["role"] == "assistant" and conv[1]["content"]
        own = model.generate(None, conv[0]["content"], max_new_tokens=4)
        assert conv[1]["content"] == (own or "I am not sure.")


def test_lora_scaling_equals_weight_interpolation_and_its_ends_are_base_and_tuned(tmp_path) -> None:
    import clapkit.lalm

    model = make_lalm()
    base = llm_state(model)
    configure_stage(model, 2, lora={"r": 4, "lora_alpha": 8, "target_modules": "all-linear"})
    with torch.no_grad():  # a trained-looking update: LoRA's B starts at zero
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    folder = model.save_pretrained(tmp_path / "tuned")
    scores = {}
    for alpha in (0.0, 0.5, 1.0):
        scaled = clapkit.lalm.load(str(folder))
        assert scale_lora(scaled, alpha) > 0
        merged = clapkit.lalm.load(str(folder), merge_lora=True)
        assert interpolate_llm(merged, base, alpha) > 0
        scores[alpha] = choice_scores(scaled, ITEMS)
        np.testing.assert_allclose(choice_scores(merged, ITEMS), scores[alpha], atol=1e-4)
    untouched = make_lalm()
    np.testing.assert_allclose(scores[0.0], choice_scores(untouched, ITEMS), atol=1e-4)  # α = 0: the base LLM
    assert not np.allclose(scores[1.0], scores[0.0], atol=1e-3)  # the update changed the answers' scores
    with pytest.raises(ValueError, match="no LoRA layers"):
        scale_lora(untouched, 0.5)
    with pytest.raises(ValueError, match="merge the LoRA layers first"):
        interpolate_llm(clapkit.lalm.load(str(folder)), base, 0.5)
    with pytest.raises(ValueError, match="differ from this LLM's"):
        interpolate_llm(untouched, {"other.weight": torch.zeros(1)}, 0.5)
