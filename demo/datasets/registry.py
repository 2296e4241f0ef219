"""The registries of dataset builders (name → ``build(out_dir, **options) -> BuildResult``) and of the class map
each builds from by default (name → JSON path; what decides the clips and splits of a build)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from clapkit.registry import Registry

__all__ = ["CLASS_MAPS", "DATASETS"]

DATASETS: Registry[Callable[..., object]] = Registry("dataset")
CLASS_MAPS: Registry[Path] = Registry("dataset class map")
