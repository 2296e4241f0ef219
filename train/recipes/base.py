"""What every recipe uses: its config, its run folder, resumable stages, training stages and their evaluation."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clapkit.evaluate.suite import EvalSets, evaluate_model, format_comparison
from clapkit.io import atomic_write_json, atomic_write_text
from clapkit.steps import StepRunner, fingerprint

__all__ = [
    "ROOT",
    "RecipeContext",
    "apply_sets",
    "clap_stage",
    "load_recipe_config",
    "recipe_config_path",
    "stage_config",
    "train_stage",
    "write_results",
]

#: The checkout's root: configs named in recipe files are relative to it.
ROOT = Path(__file__).resolve().parents[2]
SCALES = ("tiny", "demo", "full")


def recipe_config_path(name: str, scale: str) -> Path:
    """``configs/recipes/NAME/SCALE.yaml``."""
    return ROOT / "configs" / "recipes" / name / f"{scale}.yaml"


def apply_sets(config: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """``config`` with ``KEY=VALUE`` overrides applied; KEY is dotted (``stages.vanilla.set.trainer.max_steps``),
    VALUE is YAML (``8``, ``null``, ``[1, 2]``). A mapping whose keys are themselves dotted (a stage's ``set``:
    ``trainer.max_steps: 6``) is matched key by key, so the override replaces that entry. A KEY whose parent is
    not a mapping is refused."""
    config = copy.deepcopy(config)
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE (KEY dotted, VALUE as YAML)")
        node, parts, i = config, key.split("."), 0
        while True:
            # The longest run of the remaining parts that is a key of this mapping (dotted keys first).
            j = next((j for j in range(len(parts), i, -1) if ".".join(parts[i:j]) in node), i + 1)
            name = ".".join(parts[i:j])
            if j == len(parts):
                node[name] = yaml.safe_load(raw)
                break
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {'.'.join(parts[:j])} is not a mapping")
            i = j
    return config


def load_recipe_config(name: str, scale: str, path: str | Path | None = None, sets: list[str] = ()) -> dict:
    """A recipe's config: ``path`` (default ``recipe_config_path(name, scale)``) with ``sets`` applied."""
    path = Path(path) if path is not None else recipe_config_path(name, scale)
    if not path.is_file():
        raise ValueError(f"recipe {name!r} scale {scale!r}: no config {path}")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(config, dict) or config.get("recipe") != name:
        raise ValueError(f"{path}: expected a mapping with 'recipe: {name}'")
    return apply_sets(config, list(sets))


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base``, mappings key by key — except a mapping that names another ``class_path``,
    which replaces the old one whole (its ``init_args`` belong to the other class), as jsonargparse does."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        old = out.get(key)
        switch = (
            isinstance(value, Mapping)
            and isinstance(old, dict)
            and value.get("class_path", old.get("class_path")) != old.get("class_path")
        )
        if isinstance(value, Mapping) and isinstance(old, dict) and not switch:
            out[key] = _merge(old, value)
        else:
            out[key] = copy.deepcopy(dict(value)) if isinstance(value, Mapping) else value
    return out


def _dotted(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"trainer.max_steps": 8}`` → ``{"trainer": {"max_steps": 8}}`` (nested mappings are kept as they are)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _merge(node.get(parts[-1], {}), value) if isinstance(value, Mapping) else value
    return out


def stage_config(base: str | Path, sets: Mapping[str, Any], folder: Path, paths: Mapping[str, Any]) -> dict:
    """A train-app config for one stage: the YAML ``base`` (relative to the checkout) with the recipe's ``sets``
    (dotted keys) and the stage's ``paths`` (dotted keys: shards, init_from, …) merged in, and every output —
    logs, checkpoints, the exported model — moved into ``folder``."""
    base_path = Path(base) if Path(base).is_absolute() else ROOT / base
    if not base_path.is_file():
        raise ValueError(f"stage config {base}: no such file")
    config = _merge(yaml.safe_load(base_path.read_text(encoding="utf-8")), _dotted(sets))
    config = _merge(config, _dotted(paths))
    trainer = config.setdefault("trainer", {})
    trainer["default_root_dir"] = str(folder)
    trainer["logger"] = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(folder), "name": "csv"},
    }
    config.setdefault("checkpoint", {})["dirpath"] = str(folder / "checkpoints")
    config.setdefault("model", {})["export_dir"] = str(folder / "model")
    return config


@dataclass
class RecipeContext:
    """One recipe run: its config, output folder, step runner and log.

    Attributes:
        name: Recipe name.
        scale: ``tiny``, ``demo`` or ``full``.
        config: The recipe config (``load_recipe_config``).
        out: The run's folder; each stage writes ``out/<stage>/``.
        log: Where progress lines go.
        progress: Progress bars.
        results: Stage name → its evaluation (filled as stages finish or are reused).
    """

    name: str
    scale: str
    config: dict[str, Any]
    out: Path
    log: Callable[[str], None] = print
    progress: bool = True
    results: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = Path(self.out).resolve()  # stages write absolute paths (listings, JSON) that outlive the cwd
        self.runner = StepRunner(self.log, keep_folders=())

    def stage(
        self, name: str, parts: Any, run: Callable[[Path], dict[str, Any]], *, resumable: bool = False
    ) -> dict[str, Any]:
        """Run stage ``name`` in ``out/name`` unless it finished there with the same inputs (``parts``, hashed with
        the fingerprints of the stages before it)."""
        folder = self.out / name
        fp = fingerprint(parts, dict(self.runner.fingerprints))
        return self.runner.step(name, fp, folder, lambda: run(folder), resumable=resumable)


def train_stage(
    ctx: RecipeContext,
    name: str,
    spec: Mapping[str, Any],
    *,
    app: str,
    paths: Mapping[str, Any],
    evaluate: Callable[[Path], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One training stage through a train app (``python -m train clap|lalm fit``) in ``out/name``, then
    ``evaluate`` on the exported model; resumed from its last checkpoint when a run was interrupted inside it.

    Args:
        spec: The stage's recipe entry: ``config`` (a train-app YAML) and ``set`` (dotted overrides).
        app: ``clap`` or ``lalm``.
        paths: Dotted keys the recipe fills in (``data.train_shards``, ``model.init_from``, …).
        evaluate: Scores the exported model folder (called only when the stage runs).

    Returns:
        ``{"model": folder, "config": the YAML written, "train": {steps, losses}, "eval": metrics}``.
    """
    if "config" not in spec:
        raise ValueError(f"recipe stage {name}: give 'config' (a train-app YAML, e.g. configs/clap/tiny.yaml)")
    sets = dict(spec.get("set") or {})
    if "seed" in ctx.config:
        sets.setdefault("seed_everything", ctx.config["seed"])

    def run(folder: Path) -> dict[str, Any]:
        import importlib

        main = importlib.import_module(f"train.{app}").main  # the app (lightning) only when a stage trains
        config = stage_config(spec["config"], sets, folder, paths)
        if not ctx.progress:  # --quiet: no progress lines from the trainer either (not part of the fingerprint)
            config["trainer"]["enable_progress_bar"] = False
        path = atomic_write_text(folder / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        args = ["fit", "-c", str(path)]
        last = folder / "checkpoints" / "last.ckpt"
        if last.is_file():  # a run interrupted inside this stage goes on from its last checkpoint
            ctx.log(f"        resuming from {last}")
            args += ["--ckpt_path", str(last)]
        main(args)
        model_dir = folder / "model"
        if not model_dir.is_dir() or not any(model_dir.iterdir()):
            raise RuntimeError(f"stage {name}: training ended without exporting a model to {model_dir}")
        result = {"model": str(model_dir), "config": str(path), "train": _train_log(folder)}
        if evaluate is not None:
            result["eval"] = evaluate(model_dir)
            atomic_write_json(folder / "results.json", result["eval"])
        return result

    parts = {"stage": name, "app": app, "spec": spec, "paths": paths, "seed": ctx.config.get("seed")}
    return ctx.stage(name, parts, run, resumable=True)


def clap_stage(
    ctx: RecipeContext,
    name: str,
    spec: Mapping[str, Any],
    *,
    paths: Mapping[str, Any],
    eval_sets: Callable[[], EvalSets] | None,
) -> dict[str, Any]:
    """A contrastive training stage (``train_stage`` with the clap app), scored by the evaluation suite
    (zero-shot, retrieval, CompA) on ``eval_sets()``; its metrics join the run's results table."""
    evaluate = None if eval_sets is None else lambda model_dir: evaluate_export(model_dir, eval_sets(), ctx.progress)
    result = train_stage(ctx, name, spec, app="clap", paths=paths, evaluate=evaluate)
    if "eval" in result:
        ctx.results[name] = result["eval"]
        ctx.log(f"        {name}: " + _headline(result["eval"]))
    return result


def evaluate_export(model_dir: Path, sets: EvalSets, progress: bool) -> dict[str, dict]:
    """``evaluate_model`` on a saved model, without the per-item lists (predictions, confusion)."""
    import clapkit

    model = clapkit.load(str(model_dir)).eval()
    metrics = evaluate_model(model, sets, progress=progress)
    for block in metrics.values():
        for key in ("predictions", "confusion"):
            block.pop(key, None)
    return metrics


def _train_log(folder: Path) -> dict[str, Any]:
    """Steps trained and the last logged training loss, from the stage's CSV log."""
    import csv

    rows = []
    for path in sorted(folder.glob("csv/version_*/metrics.csv")):
        with open(path, newline="") as f:
            rows += list(csv.DictReader(f))
    losses = [(int(r["step"]), float(r["train/loss"])) for r in rows if r.get("train/loss")]
    if not losses:
        return {"steps": 0}
    return {"steps": max(s for s, _ in losses) + 1, "first_loss": losses[0][1], "last_loss": losses[-1][1]}


HEADLINE = (
    ("zero-shot", "zeroshot.top1"),
    ("t→a R@1", "retrieval.text_to_audio_R@1"),
    ("CompA-order group", "compa_order.group_score"),
    ("CompA-attribute group", "compa_attribute.group_score"),
)


def _headline(metrics: Mapping[str, Any]) -> str:
    out = []
    for label, path in HEADLINE:
        section, key = path.split(".")
        if key in metrics.get(section, {}):
            out.append(f"{label} {100 * metrics[section][key]:.1f} %")
    return ", ".join(out)


def write_results(ctx: RecipeContext, extra: Mapping[str, Any] | None = None) -> str:
    """``results.json`` (every stage's metrics, the timings) and ``results.md`` (the side-by-side table, in
    percent, chance first) in the run folder; returns the table."""
    table = format_comparison(ctx.results)
    atomic_write_json(
        ctx.out / "results.json",
        {
            "recipe": ctx.name,
            "scale": ctx.scale,
            "stages": ctx.results,
            "timings": ctx.runner.timings,
            **(extra or {}),
        },
    )
    lines = [f"# {ctx.name} ({ctx.scale})", "", "```", table, "```", ""]
    atomic_write_text(ctx.out / "results.md", "\n".join(lines))
    return table
