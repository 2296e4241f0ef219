"""Compositional reasoning in the CompA benchmark format (CompA-order, CompA-attribute).

An instance holds two (or, with a triplet, three) audio-caption pairs whose audio share the same sound
events in a different composition ("a dog barks, then a car passes" vs its order swap). With
``s(c, a)`` the cosine similarity of caption ``c`` and audio ``a``, CompA scores each instance like
Winoground (``evaluation/benchmark_eval.py`` of github.com/Sreyan88/CompA, strict inequalities):

- text score f = 1 when every audio prefers its own caption: ``s(c_i, a_i) > s(c_k, a_i)`` for all k ≠ i;
- audio score g = 1 when every caption prefers its own audio: ``s(c_i, a_i) > s(c_i, a_k)`` for all k ≠ i;
- group score h = f and g.

CompA's released script scores the pair and the reversed pair; ``include_triplet=True`` also brings in
the ``triplet_*`` columns where a row has them, with the same definitions over a 3 × 3 block. The random
baseline (a model whose similarities are independent random numbers) is computed exactly, per instance
size: 2 × 2 gives f = g = 1/4 and h = 1/6, as in Winoground.

That baseline assumes the scores of an instance are independent. A model that cannot tell the compositions
apart is not such a model and scores *below* it, near 0: its two audio embeddings are nearly the same vector,
so whichever caption is closer to one audio is closer to the other too, and f fails on almost every instance
(likewise g when the captions embed alike). ``compositional_scores`` therefore also reports how often one
caption wins for every audio (``same_caption_rate``) and one audio for every caption (``same_audio_rate``),
beside their values under independence (1/2 for 2 × 2): a rate near 1 means the model is blind to the
composition on that side, which is what a score under the baseline usually means.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from clapkit.evaluate.report import resolve_path
from clapkit.model import ClapModel

__all__ = [
    "CompositionalItem",
    "compositional_scores",
    "evaluate_compositional",
    "load_compa_csv",
    "random_baseline",
    "winoground_scores",
]

SLOTS: tuple[str, ...] = ("pair", "reversed_pair", "triplet")
_MISSING = {"", "-", "nan", "none", "null"}


@dataclass
class CompositionalItem:
    """One benchmark instance: ``captions[i]`` describes ``audio[i]`` (2 or 3 of each)."""

    captions: list[str]
    audio: list[str]


def winoground_scores(sim: np.ndarray) -> tuple[bool, bool, bool]:
    """Text, audio and group score of one instance.

    Args:
        sim: Similarities [n, n], ``sim[i, j] = s(caption_i, audio_j)``; caption i belongs to audio i.

    Returns:
        (f, g, h) as defined in the module docstring.
    """
    sim = np.asarray(sim, dtype=np.float64)
    n = sim.shape[0]
    if sim.shape != (n, n) or n < 2:
        raise ValueError(f"compositional: expected a square similarity block of 2+ pairs, got {sim.shape}")
    diag = np.diag(sim)
    off = ~np.eye(n, dtype=bool)
    # Column j = audio j against every caption; row i = caption i against every audio.
    f = bool(np.all((diag[None, :] > sim) | ~off))
    g = bool(np.all((diag[:, None] > sim) | ~off))
    return f, g, f and g


@lru_cache(maxsize=8)
def random_baseline(n: int) -> dict[str, float]:
    """Exact chance of f, g and h for an n × n block of i.i.d. continuous scores.

    f (and g) is (1/n)^n: each audio (caption) independently ranks its own caption (audio) first with
    probability 1/n. h asks every off-diagonal score s(c_i, a_j) to be below both s(c_i, a_i) and
    s(c_j, a_j); with uniform scores and the diagonal sorted ascending x_1 < … < x_n that has probability
    ∏_i x_i^(2(n-i)), integrated over the ordered simplex and times n! orderings:
    h = n! ∏_k 1 / (S_k + k), S_k = Σ_{i≤k} 2(n-i). n = 2 gives 1/6 (Winoground), n = 3 gives 1/60.
    """
    if n < 2:
        raise ValueError(f"compositional: an instance needs 2 or more pairs, got {n}")
    group = Fraction(math.factorial(n))
    exponent_sum = 0
    for k in range(1, n + 1):
        exponent_sum += 2 * (n - k)
        group /= exponent_sum + k
    single = float(Fraction(1, n) ** n)
    return {"text": single, "audio": single, "group": float(group)}


def compositional_scores(blocks: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean text / audio / group score over instances, with the random baseline of the same instances.

    Args:
        blocks: One similarity block [n, n] per instance (n may differ between instances).
    """
    if not blocks:
        raise ValueError("compositional: no instances to score")
    scores = np.array([winoground_scores(b) for b in blocks], dtype=np.float64)  # [N, 3]
    chance = [random_baseline(len(b)) for b in blocks]
    out: dict[str, float] = {"num_instances": len(blocks)}
    for i, name in enumerate(("text", "audio", "group")):
        out[f"{name}_score"] = float(scores[:, i].mean())
        out[f"random_{name}_score"] = float(np.mean([c[name] for c in chance]))
    # One caption (row) is the best for every audio (column), resp. one audio for every caption.
    same = np.array(
        [
            (len(set(np.asarray(b).argmax(axis=0).tolist())) == 1, len(set(np.asarray(b).argmax(axis=1).tolist())) == 1)
            for b in blocks
        ],
        dtype=np.float64,
    )
    independent = float(np.mean([float(len(b)) ** (1 - len(b)) for b in blocks]))  # n · (1/n)^n
    out["same_caption_rate"] = float(same[:, 0].mean())
    out["same_audio_rate"] = float(same[:, 1].mean())
    out["random_same_caption_rate"] = independent
    out["random_same_audio_rate"] = independent
    return out


def _value(row: dict[str, str], key: str) -> str | None:
    v = (row.get(key) or "").strip()
    return None if v.lower() in _MISSING else v


def load_compa_csv(
    path: str | Path, audio_root: str | Path | None = None, *, include_triplet: bool = False
) -> list[CompositionalItem]:
    """Read a CompA-order / CompA-attribute CSV.

    Columns ``pair_caption``, ``reversed_pair_caption``, ``pair_file``, ``reversed_pair_file`` are required;
    ``triplet_caption`` / ``triplet_file`` are optional, and cells that are empty or ``-`` mean "no triplet".
    Rows without both pairs are skipped and counted in the warning. File names are resolved against
    ``audio_root`` (default: the CSV's folder).

    Args:
        include_triplet: Score rows that have a triplet as 3 × 3 instances (default: the pair and reversed
            pair only, as CompA's evaluation script).
    """
    import warnings

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such CompA CSV")
    root = Path(audio_root) if audio_root is not None else path.parent
    items: list[CompositionalItem] = []
    skipped = 0
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"pair_caption", "reversed_pair_caption", "pair_file", "reversed_pair_file"}
        missing = need - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing CompA columns {sorted(missing)}; found {reader.fieldnames}")
        for row in reader:
            slots = SLOTS if include_triplet else SLOTS[:2]
            caps = [_value(row, f"{s}_caption") for s in slots]
            files = [_value(row, f"{s}_file") for s in slots]
            if None in caps[:2] or None in files[:2]:
                skipped += 1
                continue
            keep = [i for i in range(len(slots)) if caps[i] is not None and files[i] is not None]
            items.append(
                CompositionalItem(
                    captions=[caps[i] for i in keep],
                    audio=[resolve_path(files[i], root) for i in keep],
                )
            )
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} rows without both a pair and a reversed pair", stacklevel=2)
    if not items:
        raise ValueError(f"{path}: no complete instances")
    return items


def evaluate_compositional(
    model: ClapModel,
    items: Sequence[CompositionalItem],
    *,
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Embed each distinct clip and caption once, then return ``compositional_scores``."""
    files = list(dict.fromkeys(a for it in items for a in it.audio))
    texts = list(dict.fromkeys(c for it in items for c in it.captions))
    audio_emb = model.embed_audio(files, batch_size=batch_size, autocast_dtype=autocast_dtype, progress=progress)
    text_emb = model.embed_text(texts, autocast_dtype=autocast_dtype, progress=progress)
    fi = {f: i for i, f in enumerate(files)}
    ti = {t: i for i, t in enumerate(texts)}
    blocks = [
        text_emb[[ti[c] for c in it.captions]] @ audio_emb[[fi[a] for a in it.audio]].T  # [n captions, n audio]
        for it in items
    ]
    return compositional_scores(blocks)
