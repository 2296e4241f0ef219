"""Training data: audio file discovery, the sample schema, shard writing and the WebDataset reader.

The public names below are imported on first use, so that ``clapkit.data.files`` stays cheap to import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "InputRecord": "clapkit.data.inputs",
    "read_inputs": "clapkit.data.inputs",
    "Manifest": "clapkit.data.schema",
    "SampleMeta": "clapkit.data.schema",
    "load_manifest": "clapkit.data.schema",
    "WriterConfig": "clapkit.data.writer",
    "write_shards": "clapkit.data.writer",
    "ReaderConfig": "clapkit.data.reader",
    "ReaderStats": "clapkit.data.reader",
    "ShardReader": "clapkit.data.reader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'clapkit.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
