"""The evaluation suite on stored frozen-tower features, and side-by-side comparisons of several models.

``evaluate_stored`` runs zero-shot classification, text↔audio retrieval and the compositional benchmarks for a
model whose towers are frozen, from a ``clapkit.cache.FeatureStore`` of their outputs: only the heads and
projections run, so comparing many trained models (arms, seeds) costs seconds each. The numbers are those of
``evaluate_zeroshot`` / ``evaluate_retrieval`` / ``evaluate_compositional`` on the same files (the stored features
are the towers' exact outputs for clips of at most one window), with each metric's chance level added.

``comparison_rows`` lines the results of several models up under the chance level, ``format_comparison`` prints
them and ``save_comparison_chart`` draws them as grouped bars (PNG); ``save_per_class_csv`` writes each model's
per-class zero-shot accuracy next to descriptive columns per class.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from clapkit.cache import FeatureStore, embed_audio_features, embed_text_features
from clapkit.evaluate.compositional import CompositionalItem, compositional_scores
from clapkit.evaluate.report import format_table
from clapkit.evaluate.retrieval import KS, RetrievalSet, retrieval_metrics
from clapkit.evaluate.zeroshot import LabelledAudio, classification_metrics
from clapkit.io import atomic_write_bytes, atomic_write_text
from clapkit.model import ClapModel
from clapkit.zeroshot import DEFAULT_TEMPLATES, zero_shot

__all__ = [
    "COMPARISON_METRICS",
    "EvalSets",
    "comparison_rows",
    "evaluate_model",
    "evaluate_stored",
    "format_comparison",
    "save_comparison_chart",
    "save_per_class_csv",
]


@dataclass
class EvalSets:
    """Held-out data of the suite; audio is named by the keys of the feature store.

    Attributes:
        zeroshot: Clips with class labels (class names are the prompts).
        retrieval: Clips and captions.
        compositional: Benchmark name → CompA instances (``load_compa_csv``).
        zeroshot_cross_source: Labelled clips from sources their class never trained on (a held-out package),
            classified against the prompts of their own ``classes`` (give it ``zeroshot``'s classes to compare
            the two at one chance level).
    """

    zeroshot: LabelledAudio | None = None
    retrieval: RetrievalSet | None = None
    compositional: dict[str, list[CompositionalItem]] = field(default_factory=dict)
    zeroshot_cross_source: LabelledAudio | None = None

    def audio_keys(self) -> list[str]:
        """Every audio key the suite reads, once each."""
        keys: list[str] = []
        for data in (self.zeroshot, self.zeroshot_cross_source):
            if data is not None:
                keys += data.paths
        if self.retrieval is not None:
            keys += self.retrieval.audio
        for items in self.compositional.values():
            keys += [a for it in items for a in it.audio]
        return list(dict.fromkeys(keys))

    def texts(self) -> list[str]:
        """Every caption the suite embeds from stored text features (zero-shot prompts go through the tower)."""
        texts: list[str] = list(self.retrieval.captions) if self.retrieval is not None else []
        for items in self.compositional.values():
            texts += [c for it in items for c in it.captions]
        return list(dict.fromkeys(texts))


def evaluate_stored(
    model: ClapModel,
    audio: FeatureStore,
    text: FeatureStore,
    sets: EvalSets,
    *,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> dict[str, dict]:
    """Zero-shot, retrieval and compositional metrics of ``model`` on stored tower outputs.

    Returns:
        ``{"zeroshot": classification_metrics + chance_top1 / chance_top5 + predictions, "zeroshot_cross_source":
        the same on the cross-source clips, "retrieval": retrieval_metrics + chance_<metric> per R@k,
        <benchmark name>: compositional_scores}`` for the sets given.
    """
    return _evaluate(
        model,
        sets,
        lambda keys: embed_audio_features(model, audio, keys),
        lambda texts: embed_text_features(model, text, texts),
        templates,
    )


def evaluate_model(
    model: ClapModel,
    sets: EvalSets,
    *,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, dict]:
    """``evaluate_stored``'s metrics with the whole model: the sets name audio files (any towers, frozen or not).
    Each distinct file and caption is embedded once across the sets."""
    audio_cache: dict[str, np.ndarray] = {}
    text_cache: dict[str, np.ndarray] = {}

    def cached(items: Sequence[str], cache: dict[str, np.ndarray], embed: Callable[[list[str]], np.ndarray]):
        todo = [x for x in dict.fromkeys(items) if x not in cache]
        if todo:
            cache.update(zip(todo, np.asarray(embed(todo))))
        return np.stack([cache[x] for x in items])

    def audio(paths: Sequence[str]) -> np.ndarray:
        return cached(paths, audio_cache, lambda x: model.embed_audio(x, batch_size=batch_size, progress=progress))

    def text(texts: Sequence[str]) -> np.ndarray:
        return cached(texts, text_cache, lambda x: model.embed_text(x, progress=progress))

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _evaluate(model, sets, audio, text, templates)
    finally:
        model.train(was_training)


def _evaluate(
    model: ClapModel,
    sets: EvalSets,
    embed_audio: Callable[[Sequence[str]], np.ndarray],
    embed_text: Callable[[Sequence[str]], np.ndarray],
    templates: Sequence[str],
) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name in ("zeroshot", "zeroshot_cross_source"):
        data = getattr(sets, name)
        if data is not None:
            out[name] = _zeroshot(model, embed_audio(data.paths), data, templates)
    if sets.retrieval is not None:
        data = sets.retrieval
        metrics = retrieval_metrics(embed_audio(data.audio), embed_text(data.captions), data.caption_audio)
        n_audio, n_text = len(data.audio), len(data.captions)
        per_clip = n_text / n_audio
        for k in KS:
            metrics[f"chance_text_to_audio_R@{k}"] = min(1.0, k / n_audio)
            # A clip's best caption lands in the top k of a random ranking: 1 - C(N - m, k) / C(N, k).
            metrics[f"chance_audio_to_text_R@{k}"] = float(
                1 - np.prod([(n_text - per_clip - j) / (n_text - j) for j in range(min(k, n_text))])
            )
        out["retrieval"] = metrics
    for name, items in sets.compositional.items():
        files = list(dict.fromkeys(a for it in items for a in it.audio))
        texts = list(dict.fromkeys(c for it in items for c in it.captions))
        audio_emb, text_emb = embed_audio(files), embed_text(texts)
        fi = {f: i for i, f in enumerate(files)}
        ti = {t: i for i, t in enumerate(texts)}
        blocks = [text_emb[[ti[c] for c in it.captions]] @ audio_emb[[fi[a] for a in it.audio]].T for it in items]
        out[name] = compositional_scores(blocks)
    return out


def _zeroshot(model: ClapModel, emb: np.ndarray, data: LabelledAudio, templates: Sequence[str]) -> dict:
    """``classification_metrics`` of one labelled set from its audio embeddings, with chance levels and
    predictions."""
    result = zero_shot(model, emb, data.classes, templates=templates)
    metrics = classification_metrics(result.similarity, data.targets, data.classes)
    classes = len(data.classes)
    metrics["chance_top1"] = 1 / classes
    metrics[f"chance_top{min(5, classes)}"] = min(5, classes) / classes
    metrics["predictions"] = [data.classes[i] for i in result.similarity.argmax(axis=1)]
    return metrics


#: (row label, result key path, chance key path) of the side-by-side table; rows whose results are absent are left out.
COMPARISON_METRICS: tuple[tuple[str, str, str], ...] = (
    ("zero-shot top-1", "zeroshot.top1", "zeroshot.chance_top1"),
    ("zero-shot top-5", "zeroshot.top5", "zeroshot.chance_top5"),
    ("zero-shot class-mean top-1", "zeroshot.mean_class_accuracy", "zeroshot.chance_top1"),
    ("zero-shot top-1, cross-source", "zeroshot_cross_source.top1", "zeroshot_cross_source.chance_top1"),
    (
        "zero-shot class-mean, cross-source",
        "zeroshot_cross_source.mean_class_accuracy",
        "zeroshot_cross_source.chance_top1",
    ),
    ("text→audio R@1", "retrieval.text_to_audio_R@1", "retrieval.chance_text_to_audio_R@1"),
    ("text→audio R@10", "retrieval.text_to_audio_R@10", "retrieval.chance_text_to_audio_R@10"),
    ("audio→text R@1", "retrieval.audio_to_text_R@1", "retrieval.chance_audio_to_text_R@1"),
    ("audio→text R@10", "retrieval.audio_to_text_R@10", "retrieval.chance_audio_to_text_R@10"),
    ("CompA-order text", "compa_order.text_score", "compa_order.random_text_score"),
    ("CompA-order audio", "compa_order.audio_score", "compa_order.random_audio_score"),
    ("CompA-order group", "compa_order.group_score", "compa_order.random_group_score"),
    ("CompA-attribute text", "compa_attribute.text_score", "compa_attribute.random_text_score"),
    ("CompA-attribute audio", "compa_attribute.audio_score", "compa_attribute.random_audio_score"),
    ("CompA-attribute group", "compa_attribute.group_score", "compa_attribute.random_group_score"),
)


def _get(results: Mapping, path: str) -> float | None:
    node = results
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return float(node)


def comparison_rows(
    results: Mapping[str, Mapping], metrics: Sequence[tuple[str, str, str]] = COMPARISON_METRICS
) -> list[tuple[str, float | None, list[float | None]]]:
    """``(label, chance, [value per model])`` for each metric some model has; values are fractions."""
    rows = []
    for label, key, chance_key in metrics:
        values = [_get(r, key) for r in results.values()]
        if all(v is None for v in values):
            continue
        chance = next((c for r in results.values() if (c := _get(r, chance_key)) is not None), None)
        rows.append((label, chance, values))
    return rows


def format_comparison(
    results: Mapping[str, Mapping], metrics: Sequence[tuple[str, str, str]] = COMPARISON_METRICS
) -> str:
    """A plain-text table, in percent: metric, chance, then one column per model."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    rows = [(label, pct(chance), *map(pct, values)) for label, chance, values in comparison_rows(results, metrics)]
    return format_table(rows, header=("metric (%)", "chance", *results))


def save_comparison_chart(
    results: Mapping[str, Mapping],
    path: str | Path,
    *,
    metrics: Sequence[tuple[str, str, str]] = COMPARISON_METRICS,
    title: str = "",
) -> Path:
    """Grouped horizontal bars (percent) per metric, one colour per model, chance as a black tick (PNG, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = comparison_rows(results, metrics)
    names = list(results)
    height = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(rows) * max(1, len(names)) / 1.6 + 1.5))
    try:
        y = np.arange(len(rows))[::-1]
        for m, name in enumerate(names):
            values = [100 * (r[2][m] or 0.0) for r in rows]
            offset = (m - (len(names) - 1) / 2) * height
            bars = ax.barh(y - offset, values, height=height, label=name)
            texts = ["" if r[2][m] is None else f"{v:.1f}" for r, v in zip(rows, values)]  # no bar: no number
            ax.bar_label(bars, labels=texts, fontsize=7, padding=2)
        for yi, (_, chance, _) in zip(y, rows):
            if chance is not None:
                ax.plot([100 * chance] * 2, [yi - 0.45, yi + 0.45], color="black", linewidth=1.5)
        ax.plot([], [], color="black", linewidth=1.5, label="chance")
        ax.set_yticks(y, labels=[r[0] for r in rows])
        ax.set_xlim(0, 105)
        ax.set_xlabel("%")
        ax.legend(loc="lower right", fontsize=8)
        if title:
            ax.set_title(title, fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def save_per_class_csv(
    results: Mapping[str, Mapping], path: str | Path, *, key: str, classes: Mapping[str, Mapping[str, object]]
) -> Path:
    """A CSV with one row per class: its descriptive columns, then each model's accuracy on it (a fraction).

    Args:
        results: Model name → its results (``evaluate_stored``'s); ``results[model][key]["per_class"]`` maps a class
            name to accuracy.
        path: The CSV to write.
        key: Which zero-shot result (``"zeroshot"``, ``"zeroshot_cross_source"``).
        classes: Class name (as in ``per_class``) → its descriptive columns (the same keys for every class), in the
            order of the rows. A model without a result for a class gets an empty cell.
    """
    described = list(dict.fromkeys(k for cols in classes.values() for k in cols))
    clash = sorted(set(described) & set(results))
    if clash:
        raise ValueError(f"per-class CSV: columns {clash} are also model names; rename the models or the columns")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([*described, *results])
    for name, cols in classes.items():
        accuracy = [(r.get(key) or {}).get("per_class", {}).get(name) for r in results.values()]
        writer.writerow([*(cols.get(k, "") for k in described), *("" if a is None else f"{a:.4f}" for a in accuracy)])
    return atomic_write_text(path, buf.getvalue())
