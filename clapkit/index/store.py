"""The on-disk form of an index: a folder with ``manifest.json``, ``index.faiss`` and ``metadata.sqlite``.

A folder is written under a temporary name and renamed into place (``clapkit.io.atomic_replace_dir``), so an
interrupted save leaves the previous index intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss

from clapkit.index.sidecar import Sidecar
from clapkit.io import atomic_replace_dir

if TYPE_CHECKING:
    from clapkit.model import ClapModel

__all__ = [
    "FAISS_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "METADATA_FILE",
    "MODEL_DIR",
    "read_faiss",
    "read_manifest",
    "read_sidecar",
    "write_folder",
]

FORMAT = "clapkit-audio-index"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
FAISS_FILE = "index.faiss"
METADATA_FILE = "metadata.sqlite"
MODEL_DIR = "model"


def write_folder(
    directory: str | os.PathLike,
    index: faiss.Index | None,
    db: Sidecar,
    manifest: dict,
    model: ClapModel | None = None,
) -> Path:
    """Write the FAISS index (if any), the sidecar, the model (if given, as ``save_pretrained`` into
    ``model/``) and ``manifest`` (plus format and file names), all in one atomic folder replacement."""
    directory = Path(directory)
    files = {"faiss": FAISS_FILE if index is not None else None, "metadata": METADATA_FILE}
    with atomic_replace_dir(directory) as tmp:
        if index is not None:
            faiss.write_index(index, str(tmp / FAISS_FILE))
        db.backup_to(tmp / METADATA_FILE)
        if model is not None:
            model.save_pretrained(tmp / MODEL_DIR)
            files["model"] = MODEL_DIR
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            **manifest,
            "files": files,
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return directory


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a saved index (no FAISS or SQLite loading).

    Raises:
        ValueError: not a clapkit index folder, or a newer format.
    """
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ValueError(f"{directory}: no {MANIFEST_FILE}; expected a folder written by AudioIndex.save")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: malformed JSON ({err})") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a clapkit audio index manifest (format {manifest.get('format')!r})")
    if int(manifest.get("version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path}: index format version {manifest['version']} is newer than this clapkit reads")
    missing = [k for k in ("dim", "metric", "index", "search_defaults", "files") if k not in manifest]
    if missing:
        raise ValueError(f"{path}: manifest lacks {', '.join(missing)}; the folder is corrupt, rebuild the index")
    return manifest


def read_sidecar(directory: Path, read_only: bool) -> Sidecar:
    """The folder's metadata (copied into memory unless ``read_only``)."""
    if not (directory / METADATA_FILE).is_file():
        raise ValueError(f"{directory}: missing {METADATA_FILE}")
    return Sidecar(directory / METADATA_FILE, read_only=read_only)


def read_faiss(directory: Path, manifest: dict[str, Any], dim: int) -> faiss.Index:
    """The folder's FAISS index, checked against the manifest's width."""
    try:
        index = faiss.read_index(str(directory / manifest["files"]["faiss"]))
    except RuntimeError as err:
        raise ValueError(f"{directory / FAISS_FILE}: cannot read the FAISS index ({err})") from None
    if index.d != dim:
        raise ValueError(f"{directory}: FAISS index has dim {index.d}, manifest says {dim}")
    return index
