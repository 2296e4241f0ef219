"""The adapter folder of an audio-language model, and its writer (``save_pretrained``)::

    lalm_config.json          {"format": "clapkit-lalm", "config": LalmConfig, "parts": {...}}
    projector.safetensors     projector (and xattn layer) weights
    audio_tokens.safetensors  the <Audio> / </Audio> embedding rows (input, and output when untied)
    tokenizer/                the LLM tokenizer with the audio tokens and its chat template
    lora/                     peft LoRA adapter (when the LLM was tuned with LoRA)
    llm/                      full LLM weights (when fully fine-tuned, or when the LLM has no loadable name)
    encoder/                  clapkit encoder (when unfrozen, or when it is not a save_pretrained folder)

The encoder and the LLM are otherwise named in the config (a folder path, a registered name, or
``smollm2``) and loaded from there. ``clapkit.lalm.io.load`` reads the folder back.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from clapkit.checkpoint import write_safetensors
from clapkit.io import atomic_replace_dir
from clapkit.lalm.config import DEFAULT_LLM, LalmConfig

__all__ = ["ADAPTER_CONFIG", "AUDIO_TOKENS_FILE", "FORMAT", "PROJECTOR_FILE", "save_pretrained"]

ADAPTER_CONFIG = "lalm_config.json"
PROJECTOR_FILE = "projector.safetensors"
AUDIO_TOKENS_FILE = "audio_tokens.safetensors"
FORMAT = "clapkit-lalm"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _is_reference(name: str) -> bool:
    """Whether ``name`` can be loaded again later without saving the weights."""
    if not name:
        return False
    path = Path(name)
    return name == DEFAULT_LLM or path.is_dir() or path.is_file() or (bool(_HUB_ID.match(name)) and not path.exists())


def _base_llm_state(llm: nn.Module) -> tuple[nn.Module, dict[str, torch.Tensor] | None]:
    """The LLM under a peft wrapper, and its state dict without the LoRA layers (``None`` without peft)."""
    if not hasattr(llm, "get_base_model"):
        return llm, None
    base = llm.get_base_model()
    state = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if ".lora_" not in k}
    return base, state


def save_pretrained(model: nn.Module, directory: str | Path) -> Path:
    """Write the adapter folder of an ``AudioLanguageModel`` (see the module doc), replacing ``directory`` atomically.

    ``model`` is typed ``nn.Module`` because ``clapkit.lalm.model`` imports this module (for
    ``AudioLanguageModel.save_pretrained``); anything with the model's ``config``, ``encoder``, ``projector``, ``llm``,
    ``tokenizer`` and audio-token ids will do.

    Raises:
        ValueError: a projector that was not built by ``build_projector`` (its name and parameters are needed
            to rebuild it).
    """
    if not model.projector.registry_name:
        raise ValueError("the projector was not built by build_projector; its registry name is unknown")
    directory = Path(directory)
    with atomic_replace_dir(directory) as tmp:
        cfg = LalmConfig.from_dict(model.config.to_dict())
        cfg.projector, cfg.projector_params = model.projector.registry_name, dict(model.projector.params or {})
        parts: dict[str, str] = {}
        if not cfg.freeze_encoder or not cfg.encoder or not Path(cfg.encoder).is_dir():
            model.encoder.save_pretrained(tmp / "encoder")
            parts["encoder"] = "encoder"
        else:
            cfg.encoder = str(Path(cfg.encoder).resolve())
        base, base_state = _base_llm_state(model.llm)
        if cfg.llm_finetuned or not _is_reference(cfg.llm):
            base.save_pretrained(tmp / "llm", state_dict=base_state)
            parts["llm"] = "llm"
        elif Path(cfg.llm).exists():
            cfg.llm = str(Path(cfg.llm).resolve())
        if base_state is not None:
            # The audio-token rows are saved on their own (audio_tokens.safetensors), not the whole embedding.
            model.llm.save_pretrained(tmp / "lora", save_embedding_layers=False)
            parts["lora"] = "lora"
        write_safetensors(model.projector.state_dict(), tmp / PROJECTOR_FILE)
        write_safetensors(_audio_rows(model), tmp / AUDIO_TOKENS_FILE)
        model.tokenizer.save_pretrained(tmp / "tokenizer")
        payload = {"format": FORMAT, "config": cfg.to_dict(), "parts": parts}
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(payload, indent=2) + "\n")
    return directory


def _audio_rows(model: nn.Module) -> dict[str, torch.Tensor]:
    ids = [model.audio_id, model.audio_end_id]
    emb, out = model.llm.get_input_embeddings(), model.llm.get_output_embeddings()
    rows = {"input": emb.weight[ids].detach().cpu().contiguous()}
    if out is not None and out.weight is not emb.weight:
        rows["output"] = out.weight[ids].detach().cpu().contiguous()
    return rows
