"""Finding audio files."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

__all__ = ["AUDIO_EXTENSIONS", "find_audio_files"]

#: Extensions decoded by soundfile (libsndfile ≥ 1.1 reads mp3).
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au"})


def find_audio_files(root: str | Path, extensions: Collection[str] = AUDIO_EXTENSIONS) -> list[Path]:
    """Files under ``root`` (recursively) whose extension, lower-cased, is in ``extensions``; sorted by path.

    Only regular files count: a folder named like a file (``clips.wav/``) is searched, not returned.

    Args:
        root: The folder to search.
        extensions: Lower-case extensions with their dot (default: the audio formats soundfile decodes).
    """
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in extensions and p.is_file())
