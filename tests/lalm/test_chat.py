"""Chat formatting and label masking against hand-built expectations."""

from __future__ import annotations

import pytest

from clapkit.lalm.chat import (
    AUDIO_END_TOKEN,
    AUDIO_TOKEN,
    IGNORE_INDEX,
    ChatFormatter,
    count_audio,
    normalize_messages,
    user_content,
)

SYSTEM = "You are a helpful assistant."
CONVERSATION = [
    {"role": "user", "content": "<Audio>\nWhat sound is this?"},
    {"role": "assistant", "content": "A dog is barking."},
    {"role": "user", "content": "Which sound comes first?"},
    {"role": "assistant", "content": "The bell."},
]
# What the ChatML template must produce, written out by hand.
RENDERED = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<Audio></Audio>\nWhat sound is this?<|im_end|>\n"
    "<|im_start|>assistant\nA dog is barking.<|im_end|>\n"
    "<|im_start|>user\nWhich sound comes first?<|im_end|>\n"
    "<|im_start|>assistant\nThe bell.<|im_end|>\n"
)
# The same text cut into (piece, is_assistant) by hand.
PIECES = [
    (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<Audio></Audio>\nWhat sound is this?<|im_end|>\n<|im_start|>assistant\n",
        False,
    ),
    ("A dog is barking.<|im_end|>\n", True),
    ("<|im_start|>user\nWhich sound comes first?<|im_end|>\n<|im_start|>assistant\n", False),
    ("The bell.<|im_end|>\n", True),
]


def test_render_matches_hand_written(tokenizer):
    fmt = ChatFormatter(tokenizer, SYSTEM)
    assert fmt.render(CONVERSATION) == RENDERED
    assert fmt.render(CONVERSATION[:1], add_generation_prompt=True).endswith(
        "What sound is this?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_labels_cover_exactly_the_assistant_tokens(tokenizer):
    fmt = ChatFormatter(tokenizer, SYSTEM)
    enc = fmt.encode(CONVERSATION)
    expected_ids, expected_labels = [], []
    for text, assistant in PIECES:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        expected_ids += ids
        expected_labels += ids if assistant else [IGNORE_INDEX] * len(ids)
    assert enc.input_ids == expected_ids
    assert enc.labels == expected_labels
    kept = [t for t in enc.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(kept) == "A dog is barking.<|im_end|>\nThe bell.<|im_end|>\n"
    assert enc.num_audio == 1
    audio_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    end_id = tokenizer.convert_tokens_to_ids(AUDIO_END_TOKEN)
    pos = enc.input_ids.index(audio_id)
    assert enc.input_ids[pos + 1] == end_id  # markers are single special tokens, in pairs


def test_system_turn_in_conversation_replaces_default(tokenizer):
    fmt = ChatFormatter(tokenizer, SYSTEM)
    text = fmt.render([{"role": "system", "content": "Be brief."}, *CONVERSATION[:2]])
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user")
    assert SYSTEM not in text
    no_system = ChatFormatter(tokenizer, None).render(CONVERSATION[:2])
    assert no_system.startswith("<|im_start|>user\n")


def test_template_that_is_not_append_only_is_rejected(tokenizer):
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['content'] }}\n{% endfor %}{% if not add_generation_prompt %}END{% endif %}"
    )
    with pytest.raises(ValueError, match="append-only"):
        ChatFormatter(tokenizer, None).encode(CONVERSATION)


def test_tokenizer_without_chat_template_is_rejected(tokenizer):
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="chat_template"):
        ChatFormatter(tokenizer)


def test_truncation_never_leaves_an_unclosed_marker(tokenizer):
    fmt = ChatFormatter(tokenizer, SYSTEM)
    full = fmt.encode(CONVERSATION)
    audio_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    cut_after_marker = full.input_ids.index(audio_id) + 1
    fmt.max_length = cut_after_marker
    enc = fmt.encode(CONVERSATION)
    assert audio_id not in enc.input_ids and enc.num_audio == 0
    assert enc.input_ids == full.input_ids[: cut_after_marker - 1]
    fmt.max_length = 30
    prompt = fmt.encode_prompt(CONVERSATION[:3])
    assert len(prompt.input_ids) == 30
    assert tokenizer.decode(prompt.input_ids).endswith("<|im_start|>assistant\n")  # a prompt keeps its end


def test_layouts():
    assert user_content("text_audio", instruction="Describe the sound.") == "Describe the sound.\n<Audio>"
    assert user_content("audio_text", text="The cat sat.") == "<Audio>\nThe cat sat."
    assert user_content("pure_audio", num_audio=2) == "<Audio><Audio>"
    with pytest.raises(ValueError, match="text instruction"):
        user_content("text_audio")
    with pytest.raises(ValueError, match="no text"):
        user_content("pure_audio", instruction="Say it.")
    with pytest.raises(KeyError, match="audio_text, pure_audio, text_audio"):
        user_content("video")


def test_normalize_accepts_llava_turns_and_lowercase_markers():
    turns = [{"from": "human", "value": "<audio></audio> What is it?"}, {"from": "gpt", "value": "Rain."}]
    out = normalize_messages(turns)
    assert out == [{"role": "user", "content": "<Audio> What is it?"}, {"role": "assistant", "content": "Rain."}]
    assert count_audio(out) == 1
    with pytest.raises(ValueError, match="role 'robot'"):
        normalize_messages([{"role": "robot", "content": "x"}], "clip7")
    with pytest.raises(ValueError, match="non-empty list"):
        normalize_messages([])
