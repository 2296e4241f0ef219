"""Conversations → token ids and labels, through the LLM tokenizer's own chat template.

A conversation is a list of turns ``{"role": "system" | "user" | "assistant", "content": str}``; each clip
sits where an ``<Audio>`` marker appears in a turn's content. When rendered, a marker becomes the special
token pair ``<Audio></Audio>``; ``AudioLanguageModel`` inserts the clip's projected frames between the two
(or, for cross-attention projectors, lets the text after the marker attend to them).

Labels are ``-100`` everywhere except the tokens of assistant turns (their text and the template's
end-of-turn tokens), so the loss covers the answers only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from clapkit.registry import Registry

__all__ = [
    "AUDIO_END_TOKEN",
    "AUDIO_TOKEN",
    "DEFAULT_SYSTEM_PROMPT",
    "IGNORE_INDEX",
    "LAYOUTS",
    "ChatFormatter",
    "EncodedConversation",
    "add_audio_tokens",
    "chat_generate",
    "count_audio",
    "normalize_messages",
    "user_content",
]

AUDIO_TOKEN = "<Audio>"
AUDIO_END_TOKEN = "</Audio>"
IGNORE_INDEX = -100  # label value skipped by the cross-entropy of transformers' causal LMs
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. You can hear audio clips and answer questions about them."

_MARKER = re.compile(r"<audio>(?:\s*</audio>)?", re.IGNORECASE)
_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "human": "user", "gpt": "assistant"}

LAYOUTS: Registry = Registry("conversation layout")


@LAYOUTS.register("text_audio")
def _text_audio(instruction: str | None, text: str | None, num_audio: int) -> str:
    """LLaSO: text instruction + audio input."""
    if not instruction or text:
        raise ValueError("layout 'text_audio' takes a text instruction and no text input (the input is audio)")
    return f"{instruction}\n" + AUDIO_TOKEN * num_audio


@LAYOUTS.register("audio_text")
def _audio_text(instruction: str | None, text: str | None, num_audio: int) -> str:
    """LLaSO: audio instruction (spoken) + text input."""
    if instruction or not text:
        raise ValueError("layout 'audio_text' takes a text input and no text instruction (the instruction is audio)")
    return AUDIO_TOKEN * num_audio + f"\n{text}"


@LAYOUTS.register("pure_audio")
def _pure_audio(instruction: str | None, text: str | None, num_audio: int) -> str:
    """LLaSO: instruction and input are both audio (one clip holding both, or one clip each)."""
    if instruction or text:
        raise ValueError("layout 'pure_audio' takes no text; pass num_audio=2 for separate instruction and input")
    return AUDIO_TOKEN * num_audio


def user_content(layout: str, instruction: str | None = None, text: str | None = None, num_audio: int = 1) -> str:
    """A user turn in one of LLaSO's three modality layouts (``LAYOUTS``: text_audio, audio_text, pure_audio)."""
    if num_audio < 1:
        raise ValueError(f"layout {layout!r} needs at least one clip, got num_audio={num_audio}")
    return LAYOUTS.get(layout)(instruction, text, num_audio)


def count_audio(messages: Sequence[dict[str, str]]) -> int:
    """Number of ``<Audio>`` markers in a conversation."""
    return sum(len(_MARKER.findall(m["content"])) for m in messages)


def normalize_messages(turns: Any, name: str = "conversation") -> list[dict[str, str]]:
    """Validate turns and bring them to ``{"role", "content"}`` form.

    Accepts ``role``/``content`` turns and LLaVA / LLaSO ``from``/``value`` turns (``human`` → user,
    ``gpt`` → assistant); markers are matched case-insensitively (``<audio>``) and written as ``<Audio>``.

    Raises:
        ValueError: not a non-empty list of turns, an unknown role, or non-string content.
    """
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{name}: expected a non-empty list of turns, got {type(turns).__name__}")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ValueError(f"{name}: turn {i} is {type(turn).__name__}; expected {{'role', 'content'}}")
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if role not in _ROLES:
            raise ValueError(f"{name}: turn {i} has role {role!r}; valid roles: {', '.join(_ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"{name}: turn {i} content must be a string, got {type(content).__name__}")
        out.append({"role": _ROLES[role], "content": _MARKER.sub(AUDIO_TOKEN, content)})
    return out


def add_audio_tokens(tokenizer: Any) -> tuple[int, int]:
    """Add ``<Audio>`` and ``</Audio>`` as special tokens (if missing); returns their ids.

    The LLM's embedding matrix must then cover ``len(tokenizer)`` rows (``AudioLanguageModel`` resizes it).
    """
    missing = [t for t in (AUDIO_TOKEN, AUDIO_END_TOKEN) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return tokenizer.convert_tokens_to_ids(AUDIO_TOKEN), tokenizer.convert_tokens_to_ids(AUDIO_END_TOKEN)


@dataclass
class EncodedConversation:
    """One tokenized conversation.

    Attributes:
        input_ids: Token ids [L] with one ``<Audio>`` ``</Audio>`` pair per clip.
        labels: Targets [L]: the ids on assistant tokens, ``IGNORE_INDEX`` elsewhere.
        num_audio: Clips referenced (fewer than in the conversation if truncation cut markers off).
    """

    input_ids: list[int]
    labels: list[int]
    num_audio: int


class ChatFormatter:
    """Render and tokenize conversations with a tokenizer's chat template.

    Args:
        tokenizer: A transformers fast tokenizer with a ``chat_template``; ``<Audio>`` / ``</Audio>`` are
            added to it.
        system_prompt: Prepended as a system turn unless the conversation has one (``None``: the template's
            own default, if any).
        max_length: Text tokens kept per conversation (before audio frames are inserted); the tail is cut.
        audio_tokens: Add ``<Audio>`` / ``</Audio>`` to the tokenizer (off for text-only use of a plain LLM).
    """

    def __init__(
        self,
        tokenizer: Any,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        max_length: int | None = None,
        audio_tokens: bool = True,
    ) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"{type(tokenizer).__name__} has no chat_template; set tokenizer.chat_template to a Jinja template"
            )
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"{type(tokenizer).__name__}: a fast tokenizer is needed (character offsets for labels)")
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.max_length = max_length
        self.audio_id, self.audio_end_id = add_audio_tokens(tokenizer) if audio_tokens else (None, None)

    def _with_system(self, messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
        messages = normalize_messages(list(messages))
        if self.system_prompt is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return messages

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return text.replace(AUDIO_TOKEN, AUDIO_TOKEN + AUDIO_END_TOKEN) if self.audio_id is not None else text

    def render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
        """The conversation as the LLM reads it (system prompt added, markers expanded to token pairs)."""
        return self._render(self._with_system(messages), add_generation_prompt)

    def _assistant_spans(self, messages: list[dict[str, str]], full: str) -> list[tuple[int, int]]:
        """Character spans of the assistant turns in ``full``, found by rendering growing prefixes."""
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._render(messages[:i], add_generation_prompt=True)
            upto = self._render(messages[: i + 1])
            if not (upto.startswith(before) and full.startswith(upto)):
                raise ValueError(
                    "the tokenizer's chat template does not render a conversation as the concatenation of its "
                    "turns (a prefix renders differently), so assistant tokens cannot be located; use a template "
                    "that renders turns append-only"
                )
            spans.append((len(before), len(upto)))
        return spans

    def encode(self, messages: Sequence[dict[str, str]]) -> EncodedConversation:
        """Tokenize a training conversation; labels cover assistant turns only."""
        messages = self._with_system(messages)
        full = self._render(messages)
        spans = self._assistant_spans(messages, full)
        enc = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = [IGNORE_INDEX] * len(ids)
        for j, (start, _) in enumerate(enc["offset_mapping"]):
            if any(lo <= start < hi for lo, hi in spans):
                labels[j] = ids[j]
        return self._truncate(ids, labels)

    def encode_prompt(self, messages: Sequence[dict[str, str]]) -> EncodedConversation:
        """Tokenize a conversation as a generation prompt (ends with the assistant header; no labels)."""
        full = self.render(messages, add_generation_prompt=True)
        ids = list(self.tokenizer(full, add_special_tokens=False)["input_ids"])
        return self._truncate(ids, [IGNORE_INDEX] * len(ids), keep_end=True)

    def _truncate(self, ids: list[int], labels: list[int], keep_end: bool = False) -> EncodedConversation:
        if self.max_length is not None and len(ids) > self.max_length:
            if keep_end:  # a prompt keeps its end (the question and the assistant header)
                cut = len(ids) - self.max_length
                while cut < len(ids) and ids[cut] == self.audio_end_id:
                    cut += 1
                ids, labels = ids[cut:], labels[cut:]
            else:
                cut = self.max_length
                if ids[cut - 1] == self.audio_id:  # never keep a marker without its closing token
                    cut -= 1
                ids, labels = ids[:cut], labels[:cut]
        return EncodedConversation(ids, labels, sum(1 for t in ids if t == self.audio_id))


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists → (ids [B, L], attention_mask [B, L])."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
    return ids, mask


def end_of_turn_ids(llm: Any, tokenizer: Any) -> list[int]:
    """Token ids that end an assistant turn: the tokenizer's EOS and the LLM's generation-config EOS."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    eos = getattr(getattr(llm, "generation_config", None), "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return sorted(ids)


@torch.inference_mode()
def chat_generate(
    llm: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[dict[str, str]]],
    *,
    system_prompt: str | None = None,
    max_new_tokens: int = 128,
    **generate_kwargs: Any,
) -> list[str]:
    """Text-only replies of ``llm`` to a batch of conversations (greedy unless ``do_sample=True`` is passed)."""
    formatter = ChatFormatter(tokenizer, system_prompt, audio_tokens=False)
    rows = [formatter.encode_prompt(c).input_ids for c in conversations]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask = left_pad(rows, pad)
    device = next(llm.parameters()).device
    kwargs = {"do_sample": False, "max_new_tokens": max_new_tokens, **generate_kwargs}
    out = llm.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        pad_token_id=pad,
        eos_token_id=end_of_turn_ids(llm, tokenizer),
        **kwargs,
    )
    return [t.strip() for t in tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)]
