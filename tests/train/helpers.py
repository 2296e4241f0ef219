"""Callbacks that the subprocess tests inject through a YAML overlay (``trainer.callbacks``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning.pytorch as pl


class Sleep(pl.Callback):
    """Slow every training step down, so a test can kill the run between two checkpoints."""

    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)


class RecordWorld(pl.Callback):
    """Write what each rank saw (world size, the loss's world size, batches, steps) to ``<folder>/rank<N>.json``."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.batches = 0
        self.loss_world = None
        self.params_sum = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        self.loss_world = pl_module.loss_fn.world_size

    def on_train_end(self, trainer, pl_module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        total = sum(float(p.detach().double().sum()) for p in pl_module.model.parameters())
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "loss_world_size": self.loss_world,
            "batches": self.batches,
            "global_step": trainer.global_step,
            "params_sum": total,
        }
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


class RecordBatches(pl.Callback):
    """Append each training batch's step, epoch and sample keys to ``path`` (one JSON line per batch)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        record = {"step": trainer.global_step, "epoch": trainer.current_epoch, "keys": list(batch["keys"])}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class RecordRank(pl.Callback):
    """Write each rank's place in the world and its trainable weights' sum to ``<folder>/rank<N>.json`` (any app)."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1

    def on_train_end(self, trainer, pl_module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        trainable = [p for p in pl_module.parameters() if p.requires_grad]
        record = {
            "rank": trainer.global_rank,
            "node_rank": trainer.node_rank,
            "num_nodes": trainer.num_nodes,
            "world_size": trainer.world_size,
            "batches": self.batches,
            "global_step": trainer.global_step,
            "trainable_sum": sum(float(p.detach().double().sum()) for p in trainable),
        }
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
