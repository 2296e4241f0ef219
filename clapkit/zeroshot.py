"""Zero-shot audio classification with prompt ensembles."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from clapkit.audio import AudioSource
from clapkit.model import ClapModel

__all__ = ["DEFAULT_TEMPLATES", "ZeroShotResult", "class_embeddings", "zero_shot"]

#: LAION-CLAP's prompt first, then common variants; the class embedding is their normalised mean.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "This is a sound of {}.",
    "the sound of {}",
    "a recording of {}",
    "{}",
)


@dataclass
class ZeroShotResult:
    """Scores of each clip against each label.

    Attributes:
        labels: Class names [C].
        probs: Softmax over classes of the scaled cosine similarities [N, C].
        similarity: Cosine similarities [N, C].
    """

    labels: list[str]
    probs: np.ndarray
    similarity: np.ndarray

    @property
    def predictions(self) -> list[str]:
        return [self.labels[i] for i in self.probs.argmax(axis=1)]

    def topk(self, k: int = 5) -> list[list[tuple[str, float]]]:
        order = np.argsort(-self.probs, axis=1)[:, :k]
        return [[(self.labels[j], float(self.probs[i, j])) for j in row] for i, row in enumerate(order)]


def class_embeddings(model: ClapModel, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """One L2-normalised embedding per label: the mean over prompt templates [C, D]."""
    if not labels:
        raise ValueError("zero_shot: no labels given")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"zero_shot: every template needs a '{{}}' placeholder, got {list(templates)}")
    prompts = [t.format(label) for label in labels for t in templates]
    emb = model.embed_text(prompts).reshape(len(labels), len(templates), -1).mean(axis=1)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def zero_shot(
    model: ClapModel,
    audio: Sequence[AudioSource] | np.ndarray,
    labels: Sequence[str],
    *,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 16,
    sample_rate: int | None = None,
) -> ZeroShotResult:
    """Classify clips against free-text labels.

    Args:
        audio: Clips as ``embed_audio`` takes them, or precomputed audio embeddings [N, D].
        labels: Class names, inserted into each template.
        templates: Prompt ensemble; the defaults include LAION's "This is a sound of {}.".
    """
    labels = list(labels)
    if isinstance(audio, np.ndarray) and audio.ndim == 2 and audio.shape[1] == model.embed_dim:
        audio_emb = audio
    else:
        audio_emb = model.embed_audio(audio, batch_size=batch_size, sample_rate=sample_rate)
    text_emb = class_embeddings(model, labels, templates)
    sim = audio_emb @ text_emb.T
    logits = torch.from_numpy(sim) * float(model.scale().detach())
    return ZeroShotResult(labels=labels, probs=logits.softmax(dim=-1).numpy(), similarity=sim)
