"""Linear probe: how well a frozen representation separates classes, with a supervised classifier on top.

Zero-shot accuracy mixes what the audio features carry with what the trained heads and the text side make of it.
A multinomial logistic regression fitted on the same training clips' frozen features separates the two: a class
the probe cannot classify on held-out audio is not in the features; one the probe gets and zero-shot misses is
lost in the heads or the text prompts. Features are standardised with the training set's mean and spread, and the
regression is fitted to convergence with L-BFGS (full batch, L2 penalty).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["LinearProbe", "fit_linear_probe"]


@dataclass
class LinearProbe:
    """A fitted probe: standardisation, weights [C, D], bias [C] and the class names in column order."""

    mean: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    classes: list[str]

    def logits(self, features: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(features, dtype=torch.float64)
        if x.ndim != 2 or x.shape[1] != self.weight.shape[1]:
            raise ValueError(f"probe: expected features [N, {self.weight.shape[1]}], got {tuple(x.shape)}")
        return ((x - self.mean) / self.scale) @ self.weight.T + self.bias

    def predict(self, features: np.ndarray | torch.Tensor) -> list[str]:
        """The most likely class of each row."""
        return [self.classes[i] for i in self.logits(features).argmax(1).tolist()]


def fit_linear_probe(
    features: np.ndarray | torch.Tensor, labels: Sequence[str], *, l2: float = 1e-3, max_iter: int = 300
) -> LinearProbe:
    """Fit a multinomial logistic regression on ``features`` [N, D] with class ``labels`` [N].

    Args:
        features: One row per training example.
        labels: Its class names (at least two distinct).
        l2: Weight of the mean squared weight added to the mean cross-entropy.
        max_iter: L-BFGS iterations.
    """
    x = torch.as_tensor(features, dtype=torch.float64)
    if x.ndim != 2 or len(x) != len(labels):
        raise ValueError(f"probe: features {tuple(x.shape)} and {len(labels)} labels do not match")
    if not torch.isfinite(x).all():
        raise ValueError("probe: features hold NaN or infinite values")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"probe: needs at least two classes, got {classes}")
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[c] for c in labels])
    mean = x.mean(0)
    scale = x.std(0).clamp_min(1e-8)
    z = (x - mean) / scale
    weight = torch.zeros(len(classes), x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, y) + l2 * weight.pow(2).sum() / 2
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearProbe(mean, scale, weight.detach(), bias.detach(), classes)
