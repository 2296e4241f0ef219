"""Tiny offline parts for the LALM tests: a byte-level BPE tokenizer with a ChatML template, a random
two-layer Llama and the tiny HTSAT encoder."""

from __future__ import annotations

import functools

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from clapkit.lalm import AudioLanguageModel, build_projector
from tests.conftest import TINY_RATE, build_tiny_model

# The SmolLM2-Instruct template without its default system prompt.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CORPUS = [
    "What sound is this? A dog is barking loudly in the yard.",
    "Which sound comes first? The bell rings, then a car passes by.",
    "You are a helpful assistant. You can hear audio clips and answer questions about them.",
    "Rain falls on a roof while thunder rolls in the distance; birds sing, a door creaks.",
    "Transcribe the speech: hello world, the quick brown fox jumps over the lazy dog.",
    "(A) (B) (C) (D) Answer: yes no maybe 0 1 2 3 4 5 6 7 8 9",
]


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok.to_str()


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh ~420-token byte-level BPE tokenizer with a ChatML chat template (no network)."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()), eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tok.chat_template = CHATML
    return tok


def make_llm(tokenizer, seed: int = 0, layers: int = 2) -> LlamaForCausalLM:
    """A random Llama with hidden size 32 over the tokenizer's vocabulary."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config).eval()


def make_lalm(projector: str = "mlp2x_gelu", seed: int = 0, **params) -> AudioLanguageModel:
    """Tiny encoder + projector + tiny Llama."""
    tokenizer = make_tokenizer()
    llm = make_llm(tokenizer, seed)
    encoder = build_tiny_model(seed)
    torch.manual_seed(seed)
    proj = build_projector(
        projector, encoder.sequence_dim, llm.config.hidden_size, num_layers=llm.config.num_hidden_layers, **params
    )
    return AudioLanguageModel(encoder, proj, llm, tokenizer)


#: Small settings per projector so the tests stay fast.
PROJECTOR_PARAMS = {
    "linear": {},
    "mlp2x_gelu": {"downsample": 2},
    "qformer": {"num_queries": 2, "window": 4, "hidden": 32, "layers": 1, "heads": 2},
    "xattn": {"every": 1, "heads": 2, "ff_mult": 2.0},
}


def tone(freq: float, seconds: float, rate: int = TINY_RATE) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    return 0.5 * torch.sin(2 * torch.pi * freq * t)


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()
