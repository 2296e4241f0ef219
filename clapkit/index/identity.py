"""Which model produced an index's vectors: its name, a hash of its weights and how to load it again."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clapkit.checkpoint import weights_sha256
from clapkit.config import list_models

if TYPE_CHECKING:
    from clapkit.model import ClapModel

__all__ = ["ModelInfo", "check_model", "is_untrained_architecture", "model_info", "untrained_error"]


@dataclass(frozen=True)
class ModelInfo:
    """Which model produced an index's vectors.

    Attributes:
        name: The model config's name.
        weights_sha256: Hash of the state dict (see ``weights_sha256``).
        embed_dim: Embedding width.
        sample_rate: Audio input rate [Hz].
        source: How to load it again: a registered name or a ``save_pretrained`` directory.
    """

    name: str
    weights_sha256: str
    embed_dim: int
    sample_rate: int
    source: str = ""


def model_info(model: ClapModel, source: str | os.PathLike | None = None) -> ModelInfo:
    """Identity of ``model``; ``source`` says how to load it (default: its config name)."""
    if source is not None and Path(source).expanduser().is_dir():
        source = str(Path(source).expanduser().resolve())
    return ModelInfo(
        name=model.config.name,
        weights_sha256=weights_sha256(model),
        embed_dim=model.embed_dim,
        sample_rate=model.sample_rate,
        source=str(source) if source is not None else model.config.name,
    )


def is_untrained_architecture(source: str | os.PathLike) -> bool:
    """Whether ``clapkit.load(source)`` builds a registered architecture instead of restoring trained weights.

    Such a model has its pretrained towers but randomly initialised projections, drawn anew on every load: its
    embeddings are not meaningful, and the same model cannot be loaded again to query an index built with it.
    """
    return str(source) in list_models() and not Path(source).expanduser().exists()


def untrained_error(info: ModelInfo) -> ValueError:
    """Why an index built from an untrained architecture name cannot be queried by text or audio."""
    return ValueError(
        f"the index was built with the architecture name {info.source!r}, i.e. an untrained model whose projection "
        "layers are randomly initialised on every load: the model behind these vectors cannot be rebuilt, so the "
        "index cannot be searched by text or audio (and its vectors are not meaningful); rebuild it from a trained "
        "save_pretrained folder (`clapkit index build --model DIR`), or with --allow-untrained to keep the model "
        "in the index folder"
    )


def check_model(info: ModelInfo | None, dim: int, model: ClapModel) -> None:
    """Refuse ``model`` unless it embeds into ``dim`` dims and, when ``info`` is known, is that very model.

    Raises:
        ValueError: a different width, name or weights hash; the message says which and what to do.
    """
    if model.embed_dim != dim:
        raise ValueError(f"the model embeds into {model.embed_dim} dims but the index holds {dim}-dim vectors")
    if info is None:
        return
    sha = weights_sha256(model)
    if sha == info.weights_sha256 and model.config.name == info.name:
        return
    if is_untrained_architecture(info.source):
        raise untrained_error(info)
    raise ValueError(
        f"model mismatch: the index was built with {info.name!r} "
        f"(weights sha256 {info.weights_sha256[:12]}…, source {info.source}), "
        f"got {model.config.name!r} (weights sha256 {sha[:12]}…); load the model the index was "
        "built with, or rebuild the index with this model"
    )
