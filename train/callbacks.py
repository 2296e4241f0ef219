"""Callbacks of the training apps: throughput in the progress bar, progress lines in logs, checkpoints, the
evaluation suite."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.throughput import Throughput
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.strategies import FSDPStrategy

from clapkit.progress import LOG_INTERVAL, is_terminal

__all__ = [
    "Checkpoint",
    "EvalSuite",
    "LogProgressBar",
    "ReaderStats",
    "SamplesPerSecond",
    "ThroughputCallback",
    "batch_size_of",
    "progress_bars_for_logs",
]


def batch_size_of(batch: Any) -> int:
    """Samples in a reader batch (``audio`` [B, T]) or any batch whose first tensor is batched."""
    if isinstance(batch, dict) and "audio" in batch:
        return int(batch["audio"].shape[0])
    if isinstance(batch, dict):
        batch = next(v for v in batch.values() if isinstance(v, torch.Tensor))
    return int(batch.shape[0])


class ThroughputCallback(Callback):
    """Training throughput over all ranks, a rolling mean over ``window_size`` steps, on the progress bar.

    Lightning's ``Throughput`` does the windowed arithmetic (its ``ThroughputMonitor`` only writes to loggers);
    this logs its rates under ``rate_names`` on the progress bar and to the loggers. Subclasses say what a batch
    counts (:meth:`count`): samples, and optionally items such as tokens.

    Args:
        window_size: Steps in the rolling window (the rate spans ``window_size - 1`` step intervals).
    """

    #: (``Throughput`` metric, name it is logged under) pairs.
    rate_names: tuple[tuple[str, str], ...] = (("samples_per_sec", "samples/s"),)
    #: Seconds since an arbitrary origin; tests swap it for a controlled clock.
    clock: Callable[[], float] = staticmethod(time.perf_counter)

    def __init__(self, window_size: int = 5) -> None:
        self.window_size = window_size
        self._throughput: Throughput | None = None

    def count(self, batch: Any) -> tuple[int, int | None]:
        """(samples, items) in ``batch``; items (tokens, …) are ``None`` when only samples are counted."""
        raise NotImplementedError

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._throughput = Throughput(window_size=self.window_size, world_size=trainer.world_size)
        self._t0 = self.clock()
        self._samples = self._batches = 0
        self._items: int | None = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._throughput is None:
            return
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # the step's kernels are done, so the clock measures them
        samples, items = self.count(batch)
        self._samples += samples
        self._batches += 1
        if items is not None:
            self._items = (self._items or 0) + items
        elapsed = self.clock() - self._t0
        self._throughput.update(time=elapsed, batches=self._batches, samples=self._samples, lengths=self._items)
        metrics = self._throughput.compute()
        for key, name in self.rate_names:
            rate = metrics.get(key, metrics.get(f"device/{key}"))  # the former only if world > 1
            if rate is not None:
                pl_module.log(name, rate, prog_bar=True, on_step=True, on_epoch=False, rank_zero_only=True)


class SamplesPerSecond(ThroughputCallback):
    """Training samples per second over all ranks (``samples/s``), a rolling mean over ``window_size`` steps."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Rich's bar prints metrics as ".3f", which shows a learning rate of 1e-4 as 0.000.
        if isinstance(trainer.progress_bar_callback, RichProgressBar):
            trainer.progress_bar_callback.theme.metrics_format = ".3g"

    def count(self, batch: Any) -> tuple[int, None]:
        return batch_size_of(batch), None


class ReaderStats(Callback):
    """Log ``data/skipped``: samples the training shard reader skipped so far (corrupt, incomplete, no caption).

    Reads ``trainer.datamodule.train_reader.stats`` (a ``clapkit.data.reader.ReaderStats``, summed over the
    DataLoader workers of rank 0); does nothing for datamodules without a reader.
    """

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        reader = getattr(trainer.datamodule, "train_reader", None)
        if reader is not None:
            skipped = float(reader.stats.skipped)
            pl_module.log("data/skipped", skipped, on_step=True, on_epoch=False, rank_zero_only=True)


class Checkpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also writes ``last.ckpt`` with the final state when training ends.

    With ``every_n_train_steps: N`` and ``save_last: true`` the run can always be resumed with
    ``--ckpt_path last`` from at most N steps back, and a finished run resumes as finished.
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if not self.save_last or trainer.fast_dev_run or self.dirpath is None:
            return
        last = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        if trainer.is_global_zero and last.is_symlink():  # save_last: link — replace the link, not its target
            last.unlink()
        trainer.save_checkpoint(last, weights_only=False)  # the full training state, to resume from
        self.last_model_path = str(last)


class EvalSuite(Callback):
    """Run ``clapkit.evaluate`` on held-out sets at the end of each validation, and log the results.

    Every path is optional; give the ones you have. Metrics are logged as ``eval/<task>/<metric>``
    (e.g. ``eval/retrieval/text_to_audio_R@1``) and so can drive ``checkpoint.monitor``.

    Args:
        zeroshot: Folder with a subfolder per class, or a ``path,label`` CSV.
        retrieval: CSV / JSONL of audio paths and captions (see ``clapkit eval retrieval --help``).
        compositional: CompA benchmark CSV.
        audio_root: Folder that relative audio paths are relative to (default: each file's folder).
        include_triplet: Score CompA rows that have a triplet as 3 × 3 instances.
        batch_size: Audio windows per forward pass.
        every_n_validations: Run on every n-th validation (the suite embeds whole data sets).
    """

    def __init__(
        self,
        zeroshot: str | None = None,
        retrieval: str | None = None,
        compositional: str | None = None,
        audio_root: str | None = None,
        include_triplet: bool = False,
        batch_size: int = 16,
        every_n_validations: int = 1,
    ) -> None:
        self.paths = {"zeroshot": zeroshot, "retrieval": retrieval, "compositional": compositional}
        self.audio_root = audio_root
        self.include_triplet = include_triplet
        self.batch_size = batch_size
        self.every = max(1, every_n_validations)
        self._data: dict[str, Any] = {}
        self._runs = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not any(self.paths.values()):
            return
        if isinstance(trainer.strategy, FSDPStrategy):
            raise ValueError(
                "eval suite: not supported with strategy fsdp (parameters are sharded between validation steps); "
                "drop the eval section and run `clapkit eval` on the exported model instead"
            )
        from clapkit.evaluate import load_compa_csv, load_labelled_audio, load_retrieval_set

        loaders = {
            "zeroshot": lambda p: load_labelled_audio(p, self.audio_root),
            "retrieval": lambda p: load_retrieval_set(p, self.audio_root),
            "compositional": lambda p: load_compa_csv(p, self.audio_root, include_triplet=self.include_triplet),
        }
        self._data = {task: loaders[task](path) for task, path in self.paths.items() if path}  # fail early

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._data or trainer.sanity_checking:
            return
        self._runs += 1
        if (self._runs - 1) % self.every:
            return
        # Rank 0 evaluates; every rank then logs the same numbers, so the epoch-level sync is a no-op mean.
        metrics = trainer.strategy.broadcast(self.run(pl_module.model) if trainer.is_global_zero else None)
        for name, value in metrics.items():
            pl_module.log(name, value, sync_dist=True)

    def run(self, model) -> dict[str, float]:
        """Evaluate ``model`` on every configured set → ``{"eval/<task>/<metric>": value}``."""
        from clapkit.evaluate import evaluate_compositional, evaluate_retrieval, evaluate_zeroshot

        runners = {
            "zeroshot": evaluate_zeroshot,
            "retrieval": evaluate_retrieval,
            "compositional": evaluate_compositional,
        }
        out: dict[str, float] = {}
        for task, data in self._data.items():
            result = runners[task](model, data, batch_size=self.batch_size)
            for key, value in result.items():
                if isinstance(value, (int, float)) and not key.startswith("num_"):
                    out[f"eval/{task}/{key}"] = float(value)
        return out


class LogProgressBar(ProgressBar):
    """Training progress as plain lines, for a log file instead of a terminal.

    Lightning's tqdm bar redraws its line with a carriage return on every step, which a log (``make demo > log``,
    a batch job's output) keeps as thousands of updates on one line. This bar writes one line at most every
    ``interval`` seconds of training, the last step of each epoch, and the metrics after each validation.

    Args:
        interval: Least time between two training lines [s].
        stream: Where lines go (default: ``sys.stderr`` when a line is written).
        clock: Monotonic clock [s] (tests pass their own).
    """

    def __init__(
        self, interval: float = LOG_INTERVAL, stream: Any = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval, self.stream, self.clock = interval, stream, clock
        self._enabled = True
        self._last = -math.inf
        self._total: int | float = math.inf  # batches of the current epoch, read when it starts

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _write(self, text: str) -> None:
        if self._enabled:
            print(text, file=self.stream or sys.stderr, flush=True)

    def _metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        items = self.get_metrics(trainer, pl_module).items()
        return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = self.clock()  # the first line comes after one interval of work
        self._total = self.total_train_batches  # with max_steps, the steps left: it shrinks as they are done

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now, done, total = self.clock(), batch_idx + 1, self._total
        last = done == total
        if not last and now - self._last < self.interval:
            return
        self._last = now
        of = f"/{total}" if math.isfinite(total) else ""
        step = f"step {trainer.global_step}" + (f"/{trainer.max_steps}" if trainer.max_steps > 0 else "")
        self._write(
            f"{self.train_description} epoch {trainer.current_epoch} batch {done}{of} {step}  "
            f"{self._metrics(trainer, pl_module)}"
        )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._write(
                f"{self.validation_description} after step {trainer.global_step}  {self._metrics(trainer, pl_module)}"
            )


def progress_bars_for_logs(
    callbacks: Sequence[Callback] = (), enable_progress_bar: bool | None = True, stream: Any = None
) -> list[Callback]:
    """``[LogProgressBar()]`` when training progress would go to a log rather than a terminal, else ``[]``.

    Nothing is added when the progress bar is switched off or ``callbacks`` already hold a progress bar (the
    user's choice wins), nor on a terminal, where Lightning's own tqdm bar is the better display.
    """
    if enable_progress_bar is False or any(isinstance(c, ProgressBar) for c in callbacks):
        return []
    return [] if is_terminal(stream or sys.stderr) else [LogProgressBar(stream=stream)]
