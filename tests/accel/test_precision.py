"""The shared autocast context: autocast in the dtype asked for, or nothing."""

from __future__ import annotations

import torch

from clapkit.accel.precision import autocast


def test_cpu_bf16_turns_autocast_on():
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def test_none_leaves_autocast_off():
    with autocast(torch.device("cpu"), None):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
