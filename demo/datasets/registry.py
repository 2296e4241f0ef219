"""The registry of dataset builders (name → ``build(out_dir, **options) -> BuildResult``)."""

from __future__ import annotations

from collections.abc import Callable

from clapkit.registry import Registry

__all__ = ["DATASETS"]

DATASETS: Registry[Callable[..., object]] = Registry("dataset")
