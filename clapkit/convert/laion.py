"""LAION-CLAP ``.pt`` checkpoints (and CompA-CLAP's, saved in the same format) → clapkit ``ClapModel``.

LAION's training script saves ``{"epoch", "name", "state_dict", "optimizer"}``; keys may carry DDP's
``module.`` prefix, and checkpoints written with transformers < 4.31 hold a stale
``text_branch.embeddings.position_ids`` buffer. The architecture (HTSAT size, text branch, joint width) is read
from the weights' shapes, so the same code loads HTSAT-tiny, -base and -large with a RoBERTa or a CLIP-style
("transformer") text branch. Fusion checkpoints are refused.

Provenance: the key layout is that of ``laion_clap`` 1.1.7 (``clap_module/model.py``, ``clap_module/htsat.py``);
the HTSAT names on the clapkit side are transformers' ``ClapAudioModel`` (transformers 5.23.0).
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torchaudio

from clapkit.config import MelConfig, merge

__all__ = ["DROPPED", "check_filterbank", "dropped_reason", "laion_config", "laion_state"]

#: Checkpoint keys (regular expressions) that no clapkit module holds, and why leaving them out does not change
#: the embeddings.
DROPPED: dict[str, str] = {
    r"audio_branch\.spectrogram_extractor\..*": "STFT kernels; clapkit computes the same STFT with torchaudio",
    r"audio_branch\.logmel_extractor\..*": "mel filterbank; checked against clapkit's front end, then recomputed",
    r"audio_branch\.layers\.\d+\.blocks\.\d+\.attn_mask": "shifted-window mask; transformers computes it per input",
    r"audio_branch\.(tscam_conv|head)\..*": "AudioSet tagging head, not part of the embedding",
    r"(audio|text)_transform\..*": "MLP used only by LAION's training loss",
    r"logit_scale_t": "LAION's second temperature; clapkit keeps one (logit_scale_a)",
    r"text_branch\.embeddings\.position_ids": "stale buffer of checkpoints written with transformers < 4.31",
}

_FUSION_PREFIXES = ("audio_branch.fusion_model.", "audio_branch.mel_conv2d.", "audio_branch.mel_conv1d.")

# HTSAT block parameter names: LAION's Swin code → transformers' ClapAudioModel. Applied in order.
_HTSAT_BLOCK_RENAMES = (
    (".norm1.", ".layernorm_before."),
    (".norm2.", ".layernorm_after."),
    (".attn.proj.", ".attention.output.dense."),
    (".attn.", ".attention.self."),  # relative_position_bias_table / relative_position_index
    (".mlp.fc1.", ".intermediate.dense."),
    (".mlp.fc2.", ".output.dense."),
)
_AUDIO_PREFIX = "audio_tower.model.audio_encoder."
_TEXT_PREFIX = "text_tower.model."


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    """1 + the largest integer captured by ``pattern`` over the keys (0 when nothing matches)."""
    found = [int(m.group(1)) for k in state if (m := re.fullmatch(pattern, k))]
    return max(found) + 1 if found else 0


def _check_known(state: dict[str, torch.Tensor], source: str) -> None:
    if not any(k.startswith("audio_branch.") for k in state) or "audio_projection.0.weight" not in state:
        sample = ", ".join(sorted(state)[:5])
        raise ValueError(
            f"{source}: not a LAION-CLAP checkpoint (no audio_branch.* / audio_projection.* weights; "
            f"its keys start with: {sample}); clapkit loads LAION-CLAP / CompA-CLAP .pt files and Hugging Face "
            "ClapModel folders"
        )
    if any(k.startswith(_FUSION_PREFIXES) for k in state):
        raise ValueError(
            f"{source}: a fusion checkpoint (enable_fusion=True, e.g. 630k-fusion-best.pt); clapkit supports "
            "unfused models only — use an unfused checkpoint such as 630k-audioset-best.pt or 630k-best.pt"
        )
    if "audio_branch.patch_embed.proj.weight" not in state:
        raise ValueError(
            f"{source}: the audio branch is not HTSAT (PANN/CNN14 checkpoints are not supported); "
            "use an HTSAT checkpoint"
        )


def _audio_params(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``ClapAudioConfig`` fields of the checkpoint's HTSAT, read from weight shapes."""
    stages = _count(state, r"audio_branch\.layers\.(\d+)\..*")
    depths = [_count(state, rf"audio_branch\.layers\.{i}\.blocks\.(\d+)\..*") for i in range(stages)]
    # relative_position_bias_table is [(2·window − 1)², heads] in every block
    tables = [state[f"audio_branch.layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in range(stages)]
    proj = state["audio_branch.patch_embed.proj.weight"]  # [embed, in_chans, patch, patch]
    return {
        "patch_embeds_hidden_size": proj.shape[0],
        "depths": depths,
        "num_attention_heads": [t.shape[1] for t in tables],
        "window_size": (round(tables[0].shape[0] ** 0.5) + 1) // 2,
        "patch_size": proj.shape[-1],
        "patch_stride": [proj.shape[-1], proj.shape[-1]],
        "hidden_size": state["audio_branch.norm.weight"].shape[0],
    }


def _roberta_config(state: dict[str, torch.Tensor], base: dict[str, Any], source: str) -> dict[str, Any]:
    types = state["text_branch.embeddings.token_type_embeddings.weight"].shape[0]
    if types != 1:
        raise ValueError(
            f"{source}: the text branch has {types} token types (BERT); only RoBERTa and the CLIP-style "
            "transformer text branches are supported"
        )
    hidden = state["text_branch.embeddings.word_embeddings.weight"].shape[1]
    return {
        **base,
        "model_type": "roberta",
        "vocab_size": state["text_branch.embeddings.word_embeddings.weight"].shape[0],
        "hidden_size": hidden,
        "num_hidden_layers": _count(state, r"text_branch\.encoder\.layer\.(\d+)\..*"),
        # not stored in the weights; RoBERTa's heads are 64 wide (base: 768/12, large: 1024/16)
        "num_attention_heads": hidden // 64,
        "intermediate_size": state["text_branch.encoder.layer.0.intermediate.dense.weight"].shape[0],
        "max_position_embeddings": state["text_branch.embeddings.position_embeddings.weight"].shape[0],
        "type_vocab_size": types,
    }


def _text_tower(state: dict[str, torch.Tensor], base: dict[str, Any], source: str) -> dict[str, Any]:
    """The text tower config: ``hf`` RoBERTa (pooler output) or ``clip`` for LAION's "transformer" branch."""
    if "text_branch.embeddings.word_embeddings.weight" in state:
        params = dict(base["params"])
        params["config"] = _roberta_config(state, params.get("config", {}), source)
        return {**base, "params": params}
    if "token_embedding.weight" in state and "text_branch.resblocks.0.ln_1.weight" in state:
        vocab, width = state["token_embedding.weight"].shape
        return {
            "name": "clip",
            "params": {
                "context_length": state["positional_embedding"].shape[0],
                "vocab_size": vocab,
                "width": width,
                "heads": width // 64,  # not stored in the weights; LAION's configs use 64-wide heads
                "layers": _count(state, r"text_branch\.resblocks\.(\d+)\..*"),
            },
        }
    raise ValueError(
        f"{source}: unsupported text branch (neither RoBERTa nor LAION's transformer; BART and BERT branches "
        "are not supported)"
    )


def laion_config(state: dict[str, torch.Tensor], base: dict[str, Any], source: str) -> dict[str, Any]:
    """A clapkit model config dict for a LAION checkpoint: ``base`` with the shapes read from ``state``.

    Args:
        state: The checkpoint's state dict (``module.`` already stripped).
        base: A registered LAION model config (front end, audio policy, tokenizer), e.g.
            ``laion-htsat-base-roberta``.
        source: Name used in error messages.
    """
    _check_known(state, source)
    try:
        overrides = {
            "embed_dim": state["audio_projection.2.weight"].shape[0],
            "frontend": {"n_mels": state["audio_branch.bn0.weight"].shape[0]},
            "audio_tower": {"params": _audio_params(state)},
            "audio_projection": {"type": "mlp", "hidden": state["audio_projection.0.weight"].shape[0], "act": "relu"},
            "text_projection": {"type": "mlp", "hidden": state["text_projection.0.weight"].shape[0], "act": "relu"},
        }
        config = merge(base, overrides)
        config["text_tower"] = _text_tower(state, base["text_tower"], source)
    except KeyError as err:
        raise ValueError(f"{source}: incomplete LAION-CLAP checkpoint, no {err.args[0]}; download it again") from None
    check_filterbank(state, MelConfig(**config["frontend"]), source)
    return config


def _htsat_key(key: str) -> str:
    key = key.replace("bn0.", "batch_norm.", 1) if key.startswith("bn0.") else key
    if ".blocks." in key:
        for old, new in _HTSAT_BLOCK_RENAMES:
            key = key.replace(old, new)
    return _AUDIO_PREFIX + key


def _text_key(key: str) -> str:
    if key.startswith("text_branch.resblocks."):  # LAION's transformer → open_clip TextTransformer
        return _TEXT_PREFIX + "transformer." + key[len("text_branch.") :]
    if key.startswith(("token_embedding.", "positional_embedding", "ln_final.")):
        return _TEXT_PREFIX + key
    return _TEXT_PREFIX + key[len("text_branch.") :]


def dropped_reason(key: str) -> str | None:
    """Why ``key`` is left out of the conversion (``DROPPED``), or None if it is converted."""
    return next((why for pattern, why in DROPPED.items() if re.fullmatch(pattern, key)), None)


def laion_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename a LAION state dict to clapkit's keys.

    Keys in ``DROPPED`` are left out and returned; every other key is mapped (HTSAT's fused ``qkv`` is split into
    transformers' query/key/value), so anything unknown reaches the strict load and is reported there.

    Returns:
        The clapkit state dict and the dropped keys.
    """
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        if dropped_reason(key) is not None:
            dropped.append(key)
        elif key.startswith("audio_branch.") and ".attn.qkv." in key:
            target = _htsat_key(key[len("audio_branch.") :])  # …attention.self.qkv.{weight,bias}
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):  # rows [3·dim, …]: q, k, v
                out[target.replace(".self.qkv.", f".self.{name}.")] = part
        elif key.startswith("audio_branch."):
            out[_htsat_key(key[len("audio_branch.") :])] = value
        elif key == "logit_scale_a":
            out["logit_scale"] = value
        elif key.startswith(("audio_projection.", "text_projection.")):
            out[key] = value
        elif key.startswith(("text_branch.", "token_embedding.", "positional_embedding", "ln_final.")):
            out[_text_key(key)] = value
        else:
            out[key] = value  # unknown: the strict load names it
    return out, dropped


def check_filterbank(state: dict[str, torch.Tensor], frontend: MelConfig, source: str) -> None:
    """Refuse a checkpoint whose mel filterbank is not the one clapkit's front end computes for ``frontend``.

    LAION stores librosa's filterbank (``logmel_extractor.melW`` [n_freqs, n_mels]); clapkit's ``LogMel`` uses
    torchaudio's ``melscale_fbanks`` with the same Slaney scale and norm (they agree to ~1e-8).
    """
    mel = state.get("audio_branch.logmel_extractor.melW")
    if mel is None:
        return
    fb = torchaudio.functional.melscale_fbanks(
        n_freqs=frontend.n_fft // 2 + 1,
        f_min=frontend.f_min,
        f_max=frontend.f_max if frontend.f_max is not None else frontend.sample_rate / 2,
        n_mels=frontend.n_mels,
        sample_rate=frontend.sample_rate,
        norm=frontend.norm,
        mel_scale=frontend.mel_scale,
    )  # [n_freqs, n_mels]
    if mel.shape != fb.shape or not torch.allclose(mel.float(), fb, rtol=1e-4, atol=1e-6 * float(fb.abs().max())):
        raise ValueError(
            f"{source}: the checkpoint's mel filterbank {tuple(mel.shape)} is not the front end of its config "
            f"{tuple(fb.shape)} ({frontend.sample_rate} Hz, n_fft {frontend.n_fft}, {frontend.n_mels} mels, "
            f"{frontend.f_min:g}–{frontend.f_max:g} Hz); checkpoints trained with another front end are not supported"
        )
