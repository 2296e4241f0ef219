"""Step 7, **evaluate**: each saved model on the held-out sets — zero-shot top-1 on the in-source test clips and on
the cross-source clips (packages their class never trained on), retrieval R@k on the held-out scenes, compositional
text / audio / group scores — side by side with chance; ``results.json``, ``results.png``, ``table.txt`` and
``cross_source_classes.csv`` (per-class accuracy on the cross-source clips)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable

from clapkit.cache import embed_audio_features, embed_text_features
from clapkit.evaluate.suite import (
    COMPARISON_METRICS,
    evaluate_stored,
    format_comparison,
    save_comparison_chart,
    save_per_class_csv,
)
from clapkit.io import atomic_write_json, atomic_write_text
from clapkit.model import ClapModel
from demo.data import Workspace
from demo.lalm_qa import LALM_METRICS

__all__ = ["check_stored_features", "evaluate"]


def evaluate(
    work: Workspace, models: dict[str, ClapModel], log: Callable[[str], None], extra: dict[str, dict] | None = None
) -> dict[str, dict]:
    """The suite for each model, logged side by side; ``results.json`` + ``results.png`` + ``table.txt``.

    Args:
        work: The demo's workspace (stored features, held-out sets, output folder).
        models: Arm → its trained model.
        log: Where the table and its header go.
        extra: More results per model (the LALM step's ``{"lalm": metrics}``), added as rows of the table.
    """
    audio, text = work.stores()
    sets = work.eval_sets()
    results = {
        name: evaluate_stored(model, audio, text, sets, templates=work.config.evaluate.zeroshot_templates)
        for name, model in models.items()
    }
    for name, more in (extra or {}).items():
        results[name].update(more)
    metrics = COMPARISON_METRICS + LALM_METRICS
    folder = work.out / "results"
    table = format_comparison(results, metrics)
    z, zc = sets.zeroshot, sets.zeroshot_cross_source
    cross = f" + {len(zc.paths)} cross-source clips / {len(set(zc.targets.tolist()))} classes" if zc else ""
    header = (
        f"held-out: zero-shot on {len(z.paths)} in-source clips / {len(z.classes)} classes{cross}; retrieval on "
        f"{len(sets.retrieval.audio)} scenes; "
        + ", ".join(f"{name} {len(items)} pairs" for name, items in sets.compositional.items())
    )
    atomic_write_text(folder / "table.txt", header + "\n" + table + "\n")
    slim = {
        n: {k: {m: v for m, v in r.items() if m not in ("confusion", "predictions")} for k, r in res.items()}
        for n, res in results.items()
    }
    atomic_write_json(folder / "results.json", {"sets": header, "results": slim})
    save_comparison_chart(results, folder / "results.png", metrics=metrics, title=f"clapkit demo — {header}")
    if zc is not None:
        csv_path = folder / "cross_source_classes.csv"
        save_per_class_csv(results, csv_path, key="zeroshot_cross_source", classes=_cross(work))
    log(header)
    log(table)
    for name, res in results.items():
        for key, what in (("zeroshot", "in-source"), ("zeroshot_cross_source", "cross-source")):
            if key in res:
                failing = sorted(c for c, acc in res[key]["per_class"].items() if acc == 0)
                log(f"{name}: zero-shot classes with no {what} clip right ({len(failing)}): {', '.join(failing)}")
    return results


def _cross(work: Workspace) -> dict[str, dict[str, object]]:
    """Label → class, label, held-out package(s) and clips of each class in the cross-source split.

    A class holds out one source: one package, or packages that share samples (``shares_samples_with`` in the
    class map), listed ``a + b``.
    """
    records = work.records("cross")
    clips = Counter(r["labels"][0] for r in records)
    packages: dict[str, set[str]] = defaultdict(set)
    out: dict[str, dict[str, object]] = {}
    for r in sorted(records, key=lambda r: r["class"]):
        label = r["labels"][0]
        packages[label].add(r.get("source_package", ""))
        row = out.setdefault(label, {"class": r["class"], "label": label})
        row["held_out_package"] = " + ".join(sorted(packages[label]))
        row["clips"] = clips[label]
    return out


def check_stored_features(work: Workspace, model: ClapModel, count: int = 4) -> float:
    """Largest difference between ``embed_audio`` / ``embed_text`` and the stored-feature path on a few inputs."""
    audio, text = work.stores()
    sets = work.eval_sets()
    files = sets.zeroshot.paths[:count] + sets.retrieval.audio[:count]
    captions = sets.retrieval.captions[:count]
    a = abs(model.embed_audio(files, batch_size=count) - embed_audio_features(model, audio, files)).max()
    t = abs(model.embed_text(captions) - embed_text_features(model, text, captions)).max()
    return float(max(a, t))
