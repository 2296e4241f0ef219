"""Labeled clip datasets built from audio that is already on the machine (Debian packages).

``DATASETS`` maps a dataset name to its builder; every builder takes the output folder first::

    from demo.datasets import DATASETS
    result = DATASETS.get("debian-sounds")("data/debian-sounds")
"""

from demo.datasets.builder import (
    SPLITS,
    BuildResult,
    ClipRecord,
    build_dataset,
    check_class_map,
    class_map_fingerprint,
    format_summary,
)
from demo.datasets.classmap import ClassMap, load_class_map
from demo.datasets.debian_sounds import DEFAULT_CLASS_MAP
from demo.datasets.registry import CLASS_MAPS, DATASETS

__all__ = [
    "CLASS_MAPS",
    "DATASETS",
    "DEFAULT_CLASS_MAP",
    "SPLITS",
    "BuildResult",
    "ClassMap",
    "ClipRecord",
    "build_dataset",
    "check_class_map",
    "class_map_fingerprint",
    "format_summary",
    "load_class_map",
]
