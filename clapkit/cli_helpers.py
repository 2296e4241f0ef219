"""Argument handling shared by the ``clapkit`` subcommands: precision names and model loading with a warning."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from clapkit.factory import load
from clapkit.index.identity import is_untrained_architecture
from clapkit.model import ClapModel

__all__ = ["PRECISIONS", "UntrainedModelWarning", "load_model", "parse_dtype", "untrained_message"]

#: ``--precision`` names → autocast dtypes (``None``: float32, no autocast).
PRECISIONS: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


class UntrainedModelWarning(UserWarning):
    """A command embeds with a registered architecture name instead of trained weights."""


def parse_dtype(name: str | None) -> torch.dtype | None:
    """``"bf16"`` / ``"fp16"`` → the autocast dtype; ``None`` → ``None`` (float32).

    Raises:
        ValueError: an unknown name; the message lists the valid ones.
    """
    if name is None:
        return None
    if name not in PRECISIONS:
        raise ValueError(f"precision {name!r}: valid precisions are {', '.join(PRECISIONS)} (or none for float32)")
    return PRECISIONS[name]


def untrained_message(name: str) -> str:
    """Why embeddings from the architecture name ``name`` are not meaningful, and what to pass instead."""
    return (
        f"--model {name!r} is an architecture name, not a trained model: its pretrained towers feed projection "
        "layers that are randomly initialised (anew on every load), so these embeddings are not meaningful. "
        "Pass a trained save_pretrained folder (from `python -m train clap fit` or `clapkit convert`) instead."
    )


def load_model(name: str | Path, device: str | None = None) -> ClapModel:
    """``clapkit.load(name)``, with an ``UntrainedModelWarning`` (shown on stderr) for an architecture name."""
    if is_untrained_architecture(name):
        warnings.warn(untrained_message(str(name)), UntrainedModelWarning, stacklevel=2)
    return load(name, device=device)
