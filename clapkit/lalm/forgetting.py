"""Measuring and limiting what instruction tuning on audio costs the LLM's text-only ability.

* **The text QA set** (``resources/text_qa.jsonl``, shipped): 124 four-way multiple-choice questions (geography,
  arithmetic, word opposites, everyday facts), split into ``eval`` (93, scored) and ``replay`` (31, prompts for
  replay data). ``load_text_qa`` reads it or a file of the same format.
* **Scoring** (``choice_scores``): each choice's mean log-probability as the assistant's reply to the question
  ("cloze" scoring, the LM-evaluation-harness way for small models, which rarely follow an answer format);
  ``text_qa_metrics`` turns scores into accuracy and, against a reference model's scores (the
  base LLM), the mean KL divergence of the choice distribution and the agreement of the picks — drift that
  accuracy alone hides when both are near chance.
* **Replay data from the base model** (``self_replay_conversations``): the base LLM's own greedy answers to the
  replay prompts, so replayed text keeps its behaviour rather than teaching new answers. The same answers to the
  *eval* prompts, scored under a tuned model (``reply_scores``: mean log-probability of the reply), measure how far
  its text behaviour moved from the base's — sensitive where accuracy is not (near chance, or few items).
* **Inference-time remedies**: ``scale_lora`` discounts every LoRA update (``W + s·BA``) and ``interpolate_llm``
  merges weights (``W_base + α·(W_tuned − W_base)``, "model merging" / WiSE-FT). For a LoRA-tuned LLM the two are
  the same map; interpolation also applies to a fully fine-tuned LLM.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clapkit.lalm.chat import IGNORE_INDEX
from clapkit.lalm.data import ConversationSample
from clapkit.lalm.evaluate import mc_prompt
from clapkit.lalm.model import AudioLanguageModel
from clapkit.progress import progress_bar

__all__ = [
    "choice_scores",
    "interpolate_llm",
    "llm_state",
    "load_text_qa",
    "reply_scores",
    "reset_lora_scale",
    "scale_lora",
    "self_replay_conversations",
    "text_qa_metrics",
]

_FIELDS = ("question", "choices", "answer")


def load_text_qa(path: str | Path | None = None, *, split: str | None = None) -> list[dict[str, Any]]:
    """Multiple-choice items ``{"question", "choices", "answer", "split"?, …}`` from JSONL (default: the shipped
    set); ``split`` keeps one split (``eval`` or ``replay``).

    Raises:
        ValueError: A line that is not a JSON object with a question, ≥ 2 distinct choices and an answer among
            them (named by file and line), or no item left.
    """
    if path is None:
        text = resources.files("clapkit.lalm").joinpath("resources/text_qa.jsonl").read_text(encoding="utf-8")
        where = "clapkit/lalm/resources/text_qa.jsonl"
    else:
        if not Path(path).is_file():
            raise ValueError(f"{path}: no such text QA file")
        text, where = Path(path).read_text(encoding="utf-8"), str(path)
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}:{number}: not JSON ({err.msg})") from None
        if not isinstance(item, dict) or any(k not in item for k in _FIELDS):
            raise ValueError(f"{where}:{number}: expected an object with {', '.join(_FIELDS)}")
        choices = item["choices"]
        if not isinstance(item["question"], str) or not item["question"].strip():
            raise ValueError(f"{where}:{number}: question must be a non-empty string")
        if (
            not isinstance(choices, list)
            or not all(isinstance(c, str) and c.strip() for c in choices)
            or len(set(choices)) != len(choices)
            or len(choices) < 2
        ):
            raise ValueError(f"{where}:{number}: choices must be a list of ≥ 2 distinct strings")
        if item["answer"] not in choices:
            raise ValueError(f"{where}:{number}: answer {item['answer']!r} is not one of the choices")
        if split is None or item.get("split") == split:
            items.append(item)
    if not items:
        raise ValueError(f"{where}: no items" + (f" in split {split!r}" if split else ""))
    return items


@torch.inference_mode()
def reply_scores(
    model: AudioLanguageModel,
    conversations: Sequence[Sequence[dict[str, str]]],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> np.ndarray:
    """Mean log-probability of each text-only conversation's assistant tokens under ``model``: [N]."""
    samples = [ConversationSample(f"c{i}", list(turns)) for i, turns in enumerate(conversations)]
    collate = model.collator()
    scores: list[float] = []
    was_training = model.training
    model.eval()
    try:
        batches = range(0, len(samples), batch_size)
        for start in progress_bar(batches, desc="text replies", unit="batch", disable=not progress):
            batch = collate(samples[start : start + batch_size])
            batch = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            labels = batch["labels"][:, 1:]  # position t predicts token t + 1
            keep = (labels != IGNORE_INDEX).any(0).nonzero().squeeze(1)  # positions where some reply token is
            # Text only, so the token ids go straight to the LLM; its vocabulary-wide head runs on the kept
            # positions alone (the prompt is most of the sequence).
            logits = model.llm(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep
            ).logits  # [B, K, V]
            kept = labels[:, keep]
            mask = kept != IGNORE_INDEX
            logp = torch.log_softmax(logits[mask].float(), dim=-1)  # [targets, V]
            token = logp.gather(-1, kept[mask].unsqueeze(-1)).squeeze(-1)
            rows = torch.zeros(kept.shape[0], dtype=token.dtype).index_add_(0, mask.nonzero()[:, 0], token)
            scores += (rows / mask.sum(1).clamp(min=1)).tolist()
    finally:
        model.train(was_training)
    return np.array(scores)


def choice_scores(
    model: AudioLanguageModel,
    items: Sequence[Mapping[str, Any]],
    *,
    show_choices: bool = False,
    batch_size: int = 16,
    progress: bool = False,
) -> np.ndarray:
    """Mean log-probability of each choice's tokens as the reply to its question: [N items, C choices]
    (items with fewer choices are padded with -inf).

    Args:
        show_choices: Ask the question with its lettered choices (``mc_prompt``) instead of alone ("cloze"
            scoring). Small models score far better without them: SmolLM2-135M-Instruct picks the answer of 22 of
            the first 32 eval items alone, 10 with the choices shown (chance: 8).
    """
    conversations = []
    for item in items:
        prompt = mc_prompt(item["question"], item["choices"]) if show_choices else item["question"]
        conversations += [
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": c}] for c in item["choices"]
        ]
    scores = reply_scores(model, conversations, batch_size=batch_size, progress=progress)
    width = max(len(item["choices"]) for item in items)
    out = np.full((len(items), width), -np.inf)
    k = 0
    for i, item in enumerate(items):
        n = len(item["choices"])
        out[i, :n] = scores[k : k + n]
        k += n
    return out


def _softmax(scores: np.ndarray) -> np.ndarray:
    z = scores - scores.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def text_qa_metrics(
    scores: np.ndarray, items: Sequence[Mapping[str, Any]], reference: np.ndarray | None = None
) -> dict[str, float]:
    """``accuracy`` (the highest-scored choice is the answer) and ``chance``; with a ``reference`` model's scores
    on the same items, ``kl_to_reference`` (mean KL(reference ‖ model) of the softmax over each item's choices, in
    nats) and ``agreement`` (fraction of items where both pick the same choice)."""
    picks = scores.argmax(axis=1)
    answers = np.array([item["choices"].index(item["answer"]) for item in items])
    out = {
        "num_items": len(items),
        "accuracy": float((picks == answers).mean()),
        "chance": float(np.mean([1 / len(item["choices"]) for item in items])),
    }
    if reference is not None:
        if reference.shape != scores.shape:
            raise ValueError(f"reference scores {reference.shape} do not match {scores.shape}")
        p, q = _softmax(reference), _softmax(scores)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0).sum(axis=1)
        out["kl_to_reference"] = float(kl.mean())
        out["agreement"] = float((picks == reference.argmax(axis=1)).mean())
    return out


def self_replay_conversations(
    model: AudioLanguageModel, items: Sequence[Mapping[str, Any]], *, batch_size: int = 16, max_new_tokens: int = 32
) -> list[list[dict[str, str]]]:
    """Text-only conversations for replay: each item's question (as ``choice_scores`` asks it, without the
    choices) and ``model``'s own greedy answer — the base LLM's behaviour, not gold answers."""
    collate = model.collator(generation=True)
    prompts = [[{"role": "user", "content": item["question"]}] for item in items]
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        batch = collate([ConversationSample(f"r{start + i}", m) for i, m in enumerate(chunk)])
        batch = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        answers = model.generate_batch(batch, max_new_tokens=max_new_tokens)
        out += [[*m, {"role": "assistant", "content": a or "I am not sure."}] for m, a in zip(chunk, answers)]
    return out


def _lora_layers(model: AudioLanguageModel) -> list[Any]:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.llm.modules() if isinstance(m, LoraLayer)]


def scale_lora(model: AudioLanguageModel, scale: float) -> int:
    """Multiply every LoRA update of the LLM by ``scale`` (0: the base LLM, 1: as trained); returns the number of
    layers scaled. Apply to a freshly loaded model (scales compound).

    Raises:
        ValueError: The LLM has no LoRA layers (an adapter loaded with ``merge_lora=True``, or a full fine-tune:
            use ``interpolate_llm``).
    """
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("scale_lora: the LLM has no LoRA layers (load the adapter without merge_lora)")
    for layer in layers:
        layer.scale_layer(float(scale))
    return len(layers)


def reset_lora_scale(model: AudioLanguageModel) -> int:
    """Undo ``scale_lora``: every LoRA update back at its trained scale (``lora_alpha / r``)."""
    layers = _lora_layers(model)
    for layer in layers:
        layer.unscale_layer()
    return len(layers)


def llm_state(model: AudioLanguageModel) -> dict[str, torch.Tensor]:
    """The LLM's weights as plain tensors (a copy), keyed as in the un-adapted LLM."""
    if _lora_layers(model):
        raise ValueError("llm_state: merge the LoRA layers first (clapkit.lalm.load(..., merge_lora=True))")
    return {k: v.detach().clone() for k, v in model.llm.state_dict().items()}


@torch.no_grad()
def interpolate_llm(model: AudioLanguageModel, base: Mapping[str, torch.Tensor], alpha: float) -> int:
    """Set the LLM's weights to ``base + alpha · (current − base)`` in place (model merging: 0 = the base LLM,
    1 = as tuned); returns the number of tensors changed.

    Raises:
        ValueError: The LLM still has LoRA layers, or its tensors do not match ``base`` (another LLM).
    """
    current = model.llm.state_dict()
    if _lora_layers(model):
        raise ValueError("interpolate_llm: merge the LoRA layers first (clapkit.lalm.load(..., merge_lora=True))")
    missing = sorted(set(current) ^ set(base))
    if missing:
        raise ValueError(f"interpolate_llm: the base LLM's tensors differ from this LLM's (e.g. {missing[:3]})")
    changed, seen = 0, set()
    for name, tensor in current.items():
        if tensor.data_ptr() in seen:  # tied weights (embeddings and LM head): one tensor, interpolated once
            continue
        seen.add(tensor.data_ptr())
        if tensor.shape != base[name].shape:
            raise ValueError(
                f"interpolate_llm: {name} is {tuple(tensor.shape)} here, {tuple(base[name].shape)} in base"
            )
        if tensor.is_floating_point() and not torch.equal(tensor, base[name]):
            tensor.copy_(base[name] + alpha * (tensor - base[name]))
            changed += 1
    return changed
