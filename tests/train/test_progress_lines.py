"""Training progress in a log: plain lines at most every few seconds, never carriage-return redraws."""

from __future__ import annotations

import io

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader, TensorDataset

from train.callbacks import LogProgressBar, progress_bars_for_logs


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Clock:
    """Advances ``step`` seconds on every reading."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_a_fit_writes_a_line_per_interval_and_the_last_step(tmp_path):
    log = io.StringIO()
    bar = LogProgressBar(interval=10.0, stream=log, clock=Clock(3.0))  # one reading per step: 3 s a step
    data = DataLoader(TensorDataset(torch.randn(40, 4)), batch_size=2)  # 20 batches an epoch
    trainer = pl.Trainer(
        max_steps=25, callbacks=[bar], logger=False, enable_checkpointing=False, enable_model_summary=False,
        default_root_dir=str(tmp_path), accelerator="cpu",
    )  # fmt: skip
    trainer.fit(Tiny(), data)
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and trainer.progress_bar_callback is bar
    # Epoch 0: the epoch-start reading is at 3 s, then lines when 10 s have passed (steps 4, 8, 12, 16) and its
    # last batch (20); epoch 1 has the 5 steps left to max_steps, with a line for its last.
    steps = [int(line.split(" step ")[1].split("/")[0]) for line in lines]
    assert steps == [4, 8, 12, 16, 20, 24, 25], text
    assert lines[-1].startswith("Training epoch 1 batch 5/5 step 25/25") and "train/loss=" in lines[-1]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_log_bar_is_added_only_for_logs_and_only_when_no_bar_is_chosen():
    (added,) = progress_bars_for_logs([], True, stream=io.StringIO())
    assert isinstance(added, LogProgressBar)
    assert progress_bars_for_logs([], True, stream=FakeTerminal()) == []  # a terminal keeps tqdm's bar
    assert progress_bars_for_logs([], False, stream=io.StringIO()) == []  # progress switched off
    assert progress_bars_for_logs([TQDMProgressBar()], None, stream=io.StringIO()) == []  # the user's own bar
