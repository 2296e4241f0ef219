"""Throughput callbacks on a fake trainer: the logged rates are the counts over the window / its elapsed time."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from train.callbacks import SamplesPerSecond, ThroughputCallback
from train.lalm import TokensPerSecond


class Recorder:
    """The ``pl_module.log`` calls of a callback, per step."""

    def __init__(self) -> None:
        self.logged: list[dict[str, float]] = []

    def log(self, name: str, value: float, **kwargs: Any) -> None:
        assert kwargs["prog_bar"] and kwargs["on_step"] and not kwargs["on_epoch"]
        self.logged[-1][name] = value


def run(callback: ThroughputCallback, batches: list[Any], times: list[float], world_size: int = 1) -> list[dict]:
    """Feed ``batches`` ending at ``times`` (s after train start, which is at 100 s) through ``callback``."""
    clock = iter([100.0, *(100.0 + t for t in times)])
    callback.clock = lambda: next(clock)
    trainer = SimpleNamespace(world_size=world_size, strategy=SimpleNamespace(root_device=torch.device("cpu")))
    module = Recorder()
    callback.on_train_start(trainer, module)
    for i, batch in enumerate(batches):
        module.logged.append({})
        callback.on_train_batch_end(trainer, module, None, batch, i)
    return module.logged


# Steps of 2, 4, 6, 8 samples ending at 1, 2, 4, 8 s.
SIZES, TIMES = [2, 4, 6, 8], [1.0, 2.0, 4.0, 8.0]


@pytest.mark.parametrize("world_size", [1, 2])
def test_samples_per_second_over_the_window(world_size):
    batches = [{"audio": torch.zeros(n, 16)} for n in SIZES]
    logged = run(SamplesPerSecond(window_size=3), batches, TIMES, world_size)
    assert logged[:2] == [{}, {}]  # nothing until the window is full
    # The window holds the totals after steps 1-3, then 2-4: the samples of the later steps over their time.
    assert logged[2]["samples/s"] == pytest.approx(world_size * (4 + 6) / (4.0 - 1.0))
    assert logged[3]["samples/s"] == pytest.approx(world_size * (6 + 8) / (8.0 - 2.0))


def test_tokens_per_second_counts_text_tokens_and_conversations():
    def batch(conversations: int, tokens: int) -> dict:
        mask = torch.zeros(conversations, 50, dtype=torch.long)
        mask.view(-1)[:tokens] = 1
        return {"keys": [f"k{i}" for i in range(conversations)], "attention_mask": mask}

    tokens = [30, 70, 90, 120]
    logged = run(TokensPerSecond(window_size=2), [batch(n, t) for n, t in zip(SIZES, tokens)], TIMES)
    assert logged[0] == {}
    for step in (1, 2, 3):
        elapsed = TIMES[step] - TIMES[step - 1]
        assert logged[step]["tokens/s"] == pytest.approx(tokens[step] / elapsed)
        assert logged[step]["samples/s"] == pytest.approx(SIZES[step] / elapsed)


def test_nothing_is_logged_before_training_starts():
    module = Recorder()
    module.logged.append({})
    SamplesPerSecond().on_train_batch_end(SimpleNamespace(), module, None, {"audio": torch.zeros(2, 4)}, 0)
    assert module.logged == [{}]
