"""Small file helpers: every output is written under a temporary name and renamed into place."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_replace_dir", "atomic_save_npy", "atomic_write_bytes", "atomic_write_json", "atomic_write_text"]


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_save_npy(path: str | Path, array: np.ndarray) -> Path:
    """``np.save`` through a temporary file."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(array))
    return atomic_write_bytes(path, buf.getvalue())


@contextmanager
def atomic_replace_dir(directory: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``directory``, then swap it into place.

    Yields a new empty folder in ``directory``'s parent (created if missing). When the block finishes, that
    folder replaces ``directory``: an existing one is first renamed to ``.<name>.old`` and removed after the
    swap (restored if the swap fails). When the block raises — an error or a KeyboardInterrupt — the
    temporary folder is removed and ``directory`` is left as it was, so readers never see a half-written
    folder. Between the two renames ``directory`` is briefly absent; a crash exactly there leaves the
    previous folder at ``.<name>.old``.

    Example::

        with atomic_replace_dir(out) as tmp:
            (tmp / "config.json").write_text(text)
            save_file(state, tmp / "model.safetensors")

    Args:
        directory: The folder to write (or replace).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        yield tmp
        if not directory.exists():
            os.replace(tmp, directory)
            return
        old = directory.with_name(f".{directory.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
        try:
            os.replace(tmp, directory)
        except BaseException:
            os.replace(old, directory)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
