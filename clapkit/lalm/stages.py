"""Training stages (LLaSO): which parts of an ``AudioLanguageModel`` are trained.

``configure_stage(model, 1)`` trains the projector only (alignment); ``configure_stage(model, 2, lora={...})`` or
``full_llm=True`` adds the LLM (instruction tuning), optionally with the audio encoder unfrozen.
"""

from __future__ import annotations

from typing import Any

from clapkit.lalm.model import AudioLanguageModel

__all__ = ["configure_stage"]


def configure_stage(
    model: AudioLanguageModel,
    stage: int,
    *,
    lora: Any = None,
    full_llm: bool = False,
    unfreeze_encoder: bool = False,
) -> dict[str, int]:
    """Set the trainable parameters of a training stage.

    * Stage 1 (alignment): the projector only; encoder and LLM frozen.
    * Stage 2 (instruction tuning): the projector and the LLM, through LoRA (``lora``: a peft ``LoraConfig``
      or its keyword arguments, e.g. ``{"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}``) or in
      full (``full_llm=True``); ``unfreeze_encoder`` also trains the encoder's audio tower and head.

    Returns:
        Trainable parameters per part (``encoder``, ``projector``, ``llm``).

    Raises:
        ValueError: an unknown stage, or options that do not belong to the stage.
    """
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 (projector only) or 2 (projector + LLM), got {stage!r}")
    if stage == 1 and (lora is not None or full_llm or unfreeze_encoder):
        raise ValueError("stage 1 trains the projector only; lora, full_llm and unfreeze_encoder belong to stage 2")
    if stage == 2 and (lora is None) == (not full_llm):
        raise ValueError("stage 2 trains the LLM: pass either lora=... (peft LoRA) or full_llm=True")
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    if lora is not None:
        _apply_lora(model, lora)
    elif full_llm:
        model.llm.requires_grad_(True)
        model.config.llm_finetuned = True
    if unfreeze_encoder:
        enc = model.encoder
        for part in (enc.audio_tower, enc.audio_head):
            if part is not None:
                part.requires_grad_(True)
        enc.config.audio_tower.freeze = False  # ClapModel.train() no longer holds the tower in eval mode
        model.config.freeze_encoder = False
    model.train(model.training)
    return model.trainable_counts()


def _apply_lora(model: AudioLanguageModel, lora: Any) -> None:
    """Wrap the LLM in peft LoRA (or re-enable the adapters of an already wrapped one)."""
    try:
        from peft import LoraConfig, PeftModel, get_peft_model
    except ImportError as err:  # pragma: no cover - peft is in the lalm extra
        raise ImportError("LoRA needs peft: pip install 'clapkit[lalm]'") from err
    if isinstance(model.llm, PeftModel):
        for name, p in model.llm.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)
        return
    if not isinstance(lora, LoraConfig):
        if not isinstance(lora, dict):
            raise ValueError(f"lora must be a peft LoraConfig or a dict of its arguments, got {type(lora).__name__}")
        lora = LoraConfig(**{"task_type": "CAUSAL_LM", "target_modules": "all-linear", **lora})
    model.llm = get_peft_model(model.llm, lora)
