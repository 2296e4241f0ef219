"""The demo's steps in order, over one config (``Demo.run``); each step prints what it made and how long it took,
and a finished step is reused by the next run when its inputs and settings are unchanged.

1. **data** (``demo.data``), 2. **scenes** and 3. **benchmark** (``demo.scenes``), 4. **shards** (``demo.features``),
5. **tower** (``demo.tower``, the audio tower adapted to the training clips) and **features** (``demo.features``),
6. **train** (``demo.training``), the **lalm** stages (``demo.lalm``),
7. **evaluate** (``demo.evaluation``), 8. **search** (``demo.search``).
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
import yaml

import clapkit
from clapkit.cache import FeatureStore
from clapkit.evaluate.suite import EvalSets
from clapkit.io import atomic_write_json, atomic_write_text
from clapkit.model import ClapModel
from clapkit.steps import StepRunner, cpu_seconds, since
from demo.config import DemoConfig
from demo.data import Workspace, build_dataset
from demo.evaluation import check_stored_features, evaluate
from demo.features import make_features, make_shards
from demo.lalm import run_lalm
from demo.scenes import make_benchmark, make_scenes
from demo.search import search
from demo.training import arm_fingerprint, fit, train_arms

__all__ = ["OUT_MARKER", "Demo", "fresh_start", "quiet_libraries"]

#: A file in ``out_dir`` that marks it as the demo's, so ``--fresh`` never deletes a folder it did not make.
OUT_MARKER = ".clapkit-demo"


class Demo:
    """The demo's steps over one config; each step returns a summary and is skipped when already done.

    Args:
        config: The demo config.
        progress: Progress bars.
        log: Where progress lines go.
    """

    def __init__(self, config: DemoConfig, *, progress: bool = True, log: Callable[[str], None] = print) -> None:
        self.config = config
        self.work = Workspace(config, progress=progress)
        self.runner = StepRunner(log)

    @property
    def out(self) -> Path:
        return self.work.out

    def dataset(self) -> Path:
        return build_dataset(self.work, self.runner)

    def scenes(self) -> dict[str, Any]:
        return make_scenes(self.work, self.runner)

    def benchmark(self) -> dict[str, Any]:
        return make_benchmark(self.work, self.runner)

    def scenes_and_benchmark(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Steps 2 and 3 side by side: both only read the dataset and each composes on one core, so with two
        threads the benchmark runs in a second process while this one composes the training scenes."""
        if self.config.threads < 2:
            return self.scenes(), self.benchmark()
        lines: list[str] = []
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            future = pool.submit(_benchmark_step, self.config, dict(self.runner.fingerprints))
            scenes = self.scenes()
            benchmark, fingerprints, timings, lines = future.result()
        for line in lines:  # the benchmark's own lines, after the scenes' (its progress bars stay off)
            self.runner.log(line)
        self.runner.adopt("benchmark", fingerprints["benchmark"], timings["benchmark"])
        return scenes, benchmark

    def shards(self) -> dict[str, Any]:
        return make_shards(self.work, self.runner)

    def features(self) -> dict[str, Any]:
        return make_features(self.work, self.runner)

    def train(self) -> dict[str, Any]:
        return train_arms(self.work, self.runner)

    def fit(self, arm_name: str, *, seed: int, export_dir: Path, log_dir: Path | None = None) -> ClapModel:
        """Train one arm on the stored features (after the features step) and export it to ``export_dir``."""
        return fit(self.work, arm_name, seed=seed, export_dir=export_dir, log_dir=log_dir)

    def arm_fingerprint(self, arm_name: str, seed: int) -> str:
        """The fingerprint of ``arm_name`` trained with ``seed`` on this run's stored features."""
        return arm_fingerprint(self.work, self.runner.fingerprints["features"], arm_name, seed)

    def stores(self) -> tuple[FeatureStore, FeatureStore]:
        return self.work.stores()

    def eval_sets(self) -> EvalSets:
        return self.work.eval_sets()

    def run(self) -> dict[str, Any]:
        """Every step in order; ``{"results": …, "search": …, "timings": …}``."""
        log, runner = self.runner.log, self.runner
        start, cpu = time.perf_counter(), cpu_seconds()
        torch.set_num_threads(self.config.threads)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / OUT_MARKER).touch()
        atomic_write_text(self.out / "config.yaml", yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        self.dataset()
        self.scenes_and_benchmark()
        self.shards()
        self.features()
        trained = self.train()
        lalm = run_lalm(self.work, runner, trained) if self.config.lalm.enabled else None
        with runner.timed("evaluate"):
            models = {name: clapkit.load(info["model"]).eval() for name, info in trained.items()}
            diff = check_stored_features(self.work, next(iter(models.values())))
            log(f"stored-feature path vs embed_audio / embed_text on the saved model: max |difference| = {diff:.2e}")
            if diff > 1e-3:
                raise RuntimeError(f"stored features disagree with the model's own embeddings (max diff {diff:.2e})")
            results = evaluate(self.work, models, log, extra=lalm)
        with runner.timed("search"):
            search_arm = self.config.search.model if self.config.search.model in models else next(iter(models))
            shown = search(self.work, models[search_arm], trained[search_arm]["model"], log)
        runner.timings["total"] = since(start, cpu)
        atomic_write_json(self.out / "timings.json", runner.timings)
        log(
            "timings (wall s / CPU s): "
            + ", ".join(
                f"{k} {v['wall_s']:.0f}/{v['cpu_s']:.0f}" + (" (reused)" if v.get("reused") else "")
                for k, v in runner.timings.items()
            )
        )
        return {"results": results, "search": shown, "timings": runner.timings}


def _benchmark_step(
    config: DemoConfig, fingerprints: dict[str, str]
) -> tuple[dict[str, Any], dict[str, str], dict[str, Any], list[str]]:
    """The benchmark step in a worker process: its result, fingerprints, timings and log lines."""
    torch.set_num_threads(1)
    lines: list[str] = []
    runner = StepRunner(lines.append)
    for name, value in fingerprints.items():
        runner.record(name, value)
    result = make_benchmark(Workspace(config, progress=False), runner)
    return result, dict(runner.fingerprints), runner.timings, lines


def fresh_start(out_dir: Path) -> None:
    """Delete a previous demo output folder (only one the demo made: it holds ``OUT_MARKER``)."""
    if not out_dir.exists():
        return
    if not (out_dir / OUT_MARKER).is_file():
        raise ValueError(
            f"--fresh: {out_dir} exists but was not made by the demo (no {OUT_MARKER}); remove it yourself"
        )
    shutil.rmtree(out_dir)


def quiet_libraries(progress: bool = True) -> None:
    """Keep Lightning's start-up notices and known-harmless warnings out of the demo's output.

    Args:
        progress: ``False`` also switches transformers' loading bars off (the LLM's GGUF conversion included).
    """
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
