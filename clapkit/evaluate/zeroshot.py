"""Zero-shot classification benchmark: top-1 / top-5 accuracy, per-class accuracy, confusion matrix.

Data come from a folder per class (``root/<class>/**/*.wav``) or a CSV with ``path,label`` columns.
Class names become prompts through ``clapkit.zeroshot``'s template ensemble; underscores in names are
read as spaces (``chirping_birds`` → "This is a sound of chirping birds.").
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clapkit.data.files import find_audio_files
from clapkit.evaluate.report import resolve_path
from clapkit.io import atomic_write_bytes
from clapkit.model import ClapModel
from clapkit.zeroshot import DEFAULT_TEMPLATES, zero_shot

__all__ = [
    "LabelledAudio",
    "classification_metrics",
    "evaluate_zeroshot",
    "load_labelled_audio",
    "save_confusion_matrix",
]


@dataclass
class LabelledAudio:
    """Clips with class labels.

    Attributes:
        paths: Audio files [N].
        targets: Class index of each file [N].
        classes: Class names [C], in index order.
    """

    paths: list[str]
    targets: np.ndarray
    classes: list[str]


def load_labelled_audio(source: str | Path, audio_root: str | Path | None = None) -> LabelledAudio:
    """A folder with one subfolder per class, or a CSV with ``path`` and ``label`` columns.

    Classes are sorted by name. CSV paths that are relative are resolved against ``audio_root``
    (default: the CSV's folder).
    """
    source = Path(source)
    pairs: list[tuple[str, str]] = []
    if source.is_dir():
        for sub in sorted(p for p in source.iterdir() if p.is_dir()):
            pairs.extend((str(f), sub.name) for f in find_audio_files(sub))
        if not pairs:
            raise ValueError(f"{source}: no audio found; expected one subfolder of audio files per class")
    elif source.is_file():
        root = Path(audio_root) if audio_root is not None else source.parent
        with open(source, newline="") as f:
            reader = csv.DictReader(f)
            if not {"path", "label"} <= set(reader.fieldnames or []):
                raise ValueError(f"{source}: expected CSV columns 'path' and 'label', found {reader.fieldnames}")
            for n, row in enumerate(reader, 2):
                if not row["path"] or not row["label"]:
                    raise ValueError(f"{source}:{n}: empty path or label")
                pairs.append((resolve_path(row["path"], root), row["label"].strip()))
        if not pairs:
            raise ValueError(f"{source}: no rows")
    else:
        raise ValueError(f"{source}: not found; give a folder with one subfolder per class or a path,label CSV")
    classes = sorted({label for _, label in pairs})
    if len(classes) < 2:
        raise ValueError(f"{source}: found {len(classes)} class; zero-shot evaluation needs at least 2")
    index = {c: i for i, c in enumerate(classes)}
    return LabelledAudio(
        paths=[p for p, _ in pairs],
        targets=np.asarray([index[label] for _, label in pairs], dtype=np.int64),
        classes=classes,
    )


def classification_metrics(scores: np.ndarray, targets: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy metrics from class scores.

    Args:
        scores: Any monotone class score (probabilities, similarities) [N, C].
        targets: True class index per row [N].
        classes: Class names [C].

    Returns:
        ``top1``, ``top5`` (top-min(5, C)), ``mean_class_accuracy``, ``per_class`` ({name: accuracy},
        NaN-free: classes without samples are left out), ``confusion`` ([C, C] counts, rows = truth,
        columns = prediction) and ``num_samples``.
    """
    scores, targets = np.asarray(scores), np.asarray(targets)
    n, c = scores.shape
    if targets.shape != (n,) or c != len(classes):
        raise ValueError(f"classification: scores {scores.shape}, targets {targets.shape}, {len(classes)} classes")
    k = min(5, c)
    order = np.argsort(-scores, axis=1, kind="stable")
    top1 = order[:, 0] == targets
    topk = (order[:, :k] == targets[:, None]).any(axis=1)
    confusion = np.zeros((c, c), dtype=np.int64)
    np.add.at(confusion, (targets, order[:, 0]), 1)
    support = confusion.sum(1)
    per_class = {classes[i]: float(confusion[i, i] / support[i]) for i in range(c) if support[i]}
    return {
        "num_samples": int(n),
        "top1": float(top1.mean()),
        f"top{k}": float(topk.mean()),
        "mean_class_accuracy": float(np.mean(list(per_class.values()))),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def save_confusion_matrix(confusion: np.ndarray | list, classes: Sequence[str], path: str | Path) -> Path:
    """Row-normalised confusion matrix as a PNG.

    Drawn on a bare matplotlib ``Figure`` with the Agg canvas: no display, no pyplot, and the caller's
    matplotlib backend is left alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(confusion, dtype=np.float64)
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(classes) + 2)
    fig = Figure(figsize=(size, size))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), labels=list(classes), rotation=90)
    ax.set_yticks(range(len(classes)), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 30:  # counts in the cells while they stay legible
        for i, j in zip(*np.nonzero(cm)):
            color = "white" if rates[i, j] > 0.5 else "black"
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(path, buf.getvalue())


def evaluate_zeroshot(
    model: ClapModel,
    data: LabelledAudio,
    *,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> dict:
    """Embed the clips, classify them against prompt-ensembled class names, return ``classification_metrics``."""
    audio_emb = model.embed_audio(data.paths, batch_size=batch_size, autocast_dtype=autocast_dtype, progress=progress)
    prompts = [c.replace("_", " ") for c in data.classes]
    result = zero_shot(model, audio_emb, prompts, templates=templates)
    return classification_metrics(result.similarity, data.targets, data.classes)
