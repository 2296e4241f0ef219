"""The autocast context shared by ``ClapModel`` and the frozen-tower cache."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

__all__ = ["autocast"]


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` on ``device``'s type in ``dtype``, or a no-op context when ``dtype`` is None."""
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()
