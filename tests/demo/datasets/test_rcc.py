"""The Qt .rcc reader against files written by Qt's own rcc tool."""

from __future__ import annotations

import base64
import io
import shutil
import struct
import subprocess

import pytest
import soundfile as sf

from demo.datasets.rcc import FLAG_ZLIB, RccArchive

# Made with Qt 5.15.8's rcc (Debian qtbase5-dev-tools) from a .qrc with prefix "/pack" holding
# sounds/beep.wav (64 frames of 16-bit noise at 8 kHz, stored raw) and docs/readme.txt
# ("clapkit rcc fixture. " * 12, zlib-compressed):
#   rcc --binary --format-version {1,3} --compress-algo zlib fx.qrc -o fx_v{1,3}.rcc
#   rcc --binary --format-version 3 --compress-algo zstd fx.qrc -o fx_zstd.rcc
RCC_V1 = (
    "cXJlcwAAAAEAAAFKAAAAFAAAAOwAAACsUklGRqQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YYAAAAB5AXT+gQc6"
    "Abn5PARIDxkLwfcs8bP4ewDB5HD9Z/Fs96D5TPzSBDcMf/4DEDX4HgSWChoBSvcz9aP6lAIs9I39I/5WBoMCKgRX+Hz+LwmAET/x"
    "vRHFDycJGQNT/BYR+BYcFWkPMATY8fP/sQfn8KEECQUoCCDyP/jj+kvyYhQx+gAAACQAAAD8eJxLzkksyM4sUShKTlZIy6woKS1K"
    "1VNIHhmCAOIpXH0ABAAHZ5sAcABhAGMAawAEAAa1owBkAG8AYwBzAAYHpsSzAHMAbwB1AG4AZABzAAgLw1CGAGIAZQBlAHAALgB3"
    "AGEAdgAKCztNFAByAGUAYQBkAG0AZQAuAHQAeAB0AAAAAAACAAAAAQAAAAEAAAAAAAIAAAACAAAAAgAAAA4AAgAAAAEAAAAFAAAA"
    "HAACAAAAAQAAAAQAAAAuAAAAAAABAAAAAAAAAEQAAQAAAAEAAACw"
)
RCC_V3 = (
    "cXJlcwAAAAMAAAFOAAAAGAAAAPAAAAABAAAArFJJRkakAAAAV0FWRWZtdCAQAAAAAQABAEAfAACAPgAAAgAQAGRhdGGAAAAAeQF0"
    "/oEHOgG5+TwESA8ZC8H3LPGz+HsAweRw/WfxbPeg+Uz80gQ3DH/+AxA1+B4ElgoaAUr3M/Wj+pQCLPSN/SP+VgaDAioEV/h8/i8J"
    "gBE/8b0RxQ8nCRkDU/wWEfgWHBVpDzAE2PHz/7EH5/ChBAkFKAgg8j/44/pL8mIUMfoAAAAkAAAA/HicS85JLMjOLFEoSk5WSMus"
    "KCktStVTSB4ZggDiKVx9AAQAB2ebAHAAYQBjAGsABAAGtaMAZABvAGMAcwAGB6bEswBzAG8AdQBuAGQAcwAIC8NQhgBiAGUAZQBw"
    "AC4AdwBhAHYACgs7TRQAcgBlAGEAZABtAGUALgB0AHgAdAAAAAAAAgAAAAEAAAABAAAAAAAAAAAAAAAAAAIAAAACAAAAAgAAAAAA"
    "AAAAAAAADgACAAAAAQAAAAUAAAAAAAAAAAAAABwAAgAAAAEAAAAEAAAAAAAAAAAAAAAuAAAAAAABAAAAAAAAAaIAlU8LAAAARAAB"
    "AAAAAQAAALAAAAGiAJVPCw=="
)
RCC_ZSTD = (
    "cXJlcwAAAAMAAAFPAAAAGAAAAPEAAAAEAAAArFJJRkakAAAAV0FWRWZtdCAQAAAAAQABAEAfAACAPgAAAgAQAGRhdGGAAAAAeQF0"
    "/oEHOgG5+TwESA8ZC8H3LPGz+HsAweRw/WfxbPeg+Uz80gQ3DH/+AxA1+B4ElgoaAUr3M/Wj+pQCLPSN/SP+VgaDAioEV/h8/i8J"
    "gBE/8b0RxQ8nCRkDU/wWEfgWHBVpDzAE2PHz/7EH5/ChBAkFKAgg8j/44/pL8mIUMfoAAAAlKLUv/SD85QAAqGNsYXBraXQgcmNj"
    "IGZpeHR1cmUuIAEAyUhNJgAEAAdnmwBwAGEAYwBrAAQABrWjAGQAbwBjAHMABgemxLMAcwBvAHUAbgBkAHMACAvDUIYAYgBlAGUA"
    "cAAuAHcAYQB2AAoLO00UAHIAZQBhAGQAbQBlAC4AdAB4AHQAAAAAAAIAAAABAAAAAQAAAAAAAAAAAAAAAAACAAAAAgAAAAIAAAAA"
    "AAAAAAAAAA4AAgAAAAEAAAAFAAAAAAAAAAAAAAAcAAIAAAABAAAABAAAAAAAAAAAAAAALgAAAAAAAQAAAAAAAAGiAJVPCwAAAEQA"
    "BAAAAAEAAACwAAABogCVTws="
)
README = b"clapkit rcc fixture. " * 12


@pytest.mark.parametrize("blob,version", [(RCC_V1, 1), (RCC_V3, 3)])
def test_reads_tree_and_files_written_by_qt_rcc(blob: str, version: int) -> None:
    archive = RccArchive(base64.b64decode(blob))
    assert archive.version == version
    assert archive.names() == ["pack/docs/readme.txt", "pack/sounds/beep.wav"]
    assert archive.entries["pack/docs/readme.txt"].flags & FLAG_ZLIB  # compressed by rcc
    assert not archive.entries["pack/sounds/beep.wav"].compressed  # noise does not compress: stored raw
    assert archive.read("pack/docs/readme.txt") == README
    audio, rate = sf.read(io.BytesIO(archive.read(":/pack/sounds/beep.wav")), dtype="int16")
    assert rate == 8000 and audio.shape == (64,)
    assert len(archive) == 2 and ":/pack/sounds/beep.wav" in archive and "pack/nope" not in archive


def test_glob_crosses_folders_and_accepts_qt_prefix() -> None:
    archive = RccArchive(base64.b64decode(RCC_V3))
    assert archive.glob("*.wav") == ["pack/sounds/beep.wav"]
    assert archive.glob(":/pack/docs/*") == ["pack/docs/readme.txt"]
    assert archive.glob("pack/*/*.ogg") == []


def test_zstd_entries_raise_with_the_fix_and_raw_entries_still_read() -> None:
    archive = RccArchive(base64.b64decode(RCC_ZSTD))
    with pytest.raises(ValueError, match="--compress-algo zlib"):
        archive.read("pack/docs/readme.txt")
    assert archive.read("pack/sounds/beep.wav")[:4] == b"RIFF"


def test_unknown_entry_lists_how_to_find_names() -> None:
    with pytest.raises(KeyError, match="names()"):
        RccArchive(base64.b64decode(RCC_V3)).read("pack/missing.wav")


def test_bad_input_names_the_problem(tmp_path) -> None:
    good = base64.b64decode(RCC_V3)
    with pytest.raises(ValueError, match="no 'qres' header"):
        RccArchive(b"RIFF" + good[4:])
    with pytest.raises(ValueError, match="format version 9"):
        RccArchive(good[:4] + struct.pack(">i", 9) + good[8:])
    with pytest.raises(ValueError, match="outside|truncated|past the end"):
        RccArchive(good[:200])
    with pytest.raises(FileNotFoundError, match="no such .rcc"):
        RccArchive(tmp_path / "missing.rcc")
    # Corrupt the compressed payload of readme.txt: decompression fails with a clear message.
    archive = RccArchive(good)
    entry = archive.entries["pack/docs/readme.txt"]
    broken = bytearray(good)
    broken[entry.offset + 10 : entry.offset + 14] = b"\xff\xff\xff\xff"
    with pytest.raises(ValueError, match="damaged zlib|bytes after decompression"):
        RccArchive(bytes(broken)).read("pack/docs/readme.txt")


@pytest.mark.skipif(shutil.which("rcc") is None, reason="Qt's rcc tool is not installed (qtbase5-dev-tools)")
def test_round_trip_through_installed_rcc(tmp_path) -> None:
    files = {"a/b/c.txt": b"deep " * 50, "top.bin": bytes(range(256)), "a/x.txt": b"x"}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    entries = "".join(f"<file>{name}</file>" for name in files)
    (tmp_path / "t.qrc").write_text(f'<RCC><qresource prefix="/">{entries}</qresource></RCC>')
    out = tmp_path / "t.rcc"
    subprocess.run(["rcc", "--binary", "--compress-algo", "zlib", "t.qrc", "-o", str(out)], cwd=tmp_path, check=True)
    archive = RccArchive(out)
    assert archive.names() == sorted(files)
    assert {name: archive.read(name) for name in files} == files
