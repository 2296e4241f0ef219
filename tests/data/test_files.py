"""The one audio-file finder: recursive, sorted, regular files only, by extension."""

from __future__ import annotations

from clapkit.data.files import AUDIO_EXTENSIONS, find_audio_files


def test_finds_audio_files_recursively_sorted_and_files_only(tmp_path):
    for rel in ("b.wav", "a/z.FLAC", "a/c.mp3", "notes.txt", "a/deeper/d.ogg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "clips.wav").mkdir()  # a folder named like a file is searched, never returned
    (tmp_path / "clips.wav" / "e.aiff").write_bytes(b"")
    found = find_audio_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a/c.mp3",
        "a/deeper/d.ogg",
        "a/z.FLAC",
        "b.wav",
        "clips.wav/e.aiff",
    ]
    assert all(p.is_file() for p in found)
    assert find_audio_files(tmp_path, {".txt"}) == [tmp_path / "notes.txt"]
    assert find_audio_files(tmp_path / "a" / "deeper", AUDIO_EXTENSIONS - {".ogg"}) == []
