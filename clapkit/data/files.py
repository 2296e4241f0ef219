"""Finding audio files."""

from __future__ import annotations

#: Extensions decoded by soundfile (libsndfile ≥ 1.1 reads mp3).
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au"})
