"""The LightningCLI base of the training apps."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI

from train.callbacks import progress_bars_for_logs

__all__ = ["TrainCLI"]


class TrainCLI(LightningCLI):
    """LightningCLI whose trainer writes its progress as plain lines when the output is a log, not a terminal."""

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config_init.get(str(self.subcommand), self.config_init).get("trainer", {})
        listed = list(kwargs.get("callbacks", config.get("callbacks")) or [])
        extra = progress_bars_for_logs(listed, kwargs.get("enable_progress_bar", config.get("enable_progress_bar")))
        if extra:
            kwargs["callbacks"] = listed + extra
        return super().instantiate_trainer(**kwargs)
