"""Read files out of Qt binary resource files (``.rcc``, made by ``rcc --binary``).

Qt ships no tool that unpacks a compiled ``.rcc`` (``rcc --list`` lists the entries of a ``.qrc``
source, not of a compiled file), so this module reads the documented binary layout directly.
The layout is the one written by ``RCCResourceLibrary::writeHeader`` / ``writeDataBlobs`` /
``writeDataNames`` / ``writeDataStructure`` in ``qtbase/src/tools/rcc/rcc.cpp`` and read by
``QResourceRoot`` in ``qtbase/src/corelib/io/qresource.cpp`` (format versions 1-3, Qt 5.x and 6.x);
Kaitai Struct's ``qt_resource.ksy`` describes the same layout. All integers are big-endian::

    header   "qres", int32 version, int32 tree offset, int32 data offset, int32 names offset,
             [version >= 3: int32 overall flags]
    tree     nodes of 14 bytes (version 1) or 22 bytes (version >= 2); node 0 is the root directory:
             int32 name offset, int16 flags (1 zlib, 2 directory, 4 zstd), then
             directory: int32 child count, int32 index of the first child node
             file:      int16 territory, int16 language, int32 data offset
             [version >= 2: int64 last modified, ms since the epoch]
    names    uint16 length, uint32 hash, length UTF-16BE code units
    data     uint32 size, size bytes; zlib entries start with Qt's 4-byte big-endian uncompressed size

Example::

    archive = RccArchive("/usr/share/gcompris-qt/rcc/instruments.rcc")
    for path in archive.glob("*.ogg"):
        audio = archive.read(path)
"""

from __future__ import annotations

import fnmatch
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RccArchive", "RccEntry"]

MAGIC = b"qres"
FLAG_ZLIB = 0x01
FLAG_DIRECTORY = 0x02
FLAG_ZSTD = 0x04
_SUPPORTED_VERSIONS = (1, 2, 3)


@dataclass(frozen=True)
class RccEntry:
    """One file stored in an ``.rcc``.

    Attributes:
        path: Resource path without the leading ``:/`` (``gcompris/src/core/resource/intro.ogg``).
        offset: Byte offset of the entry's data block (its 4-byte size field) in the file.
        size: Stored (possibly compressed) size in bytes.
        flags: Node flags (``FLAG_ZLIB`` / ``FLAG_ZSTD``).
        territory: Qt territory (country) code of a localised entry, 0 for any.
        language: Qt language code of a localised entry, 0 or 1 (C) for any.
    """

    path: str
    offset: int
    size: int
    flags: int
    territory: int
    language: int

    @property
    def compressed(self) -> bool:
        return bool(self.flags & (FLAG_ZLIB | FLAG_ZSTD))


class RccArchive:
    """The file tree of one binary ``.rcc``; entries are read lazily from the bytes held in memory.

    Args:
        source: Path of the ``.rcc`` or its bytes.
        name: Name used in error messages (defaults to the path).

    Raises:
        ValueError: not an ``.rcc`` file, an unsupported format version, or a damaged tree.
        FileNotFoundError: ``source`` is a path that does not exist.
    """

    def __init__(self, source: str | Path | bytes, name: str | None = None) -> None:
        if isinstance(source, (bytes, bytearray)):
            self._buf = bytes(source)
            self.name = name or f"<{len(source)} bytes of rcc>"
        else:
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such .rcc file")
            self._buf = path.read_bytes()
            self.name = name or str(path)
        self.version, self._tree, self._data, self._names = self._header()
        self._node_size = 14 if self.version == 1 else 22
        self.entries: dict[str, RccEntry] = {}
        self._walk()

    def _header(self) -> tuple[int, int, int, int]:
        if len(self._buf) < 20 or self._buf[:4] != MAGIC:
            raise ValueError(f"{self.name}: not a Qt binary resource (no 'qres' header); make one with rcc --binary")
        version, tree, data, names = struct.unpack_from(">iiii", self._buf, 4)
        if version not in _SUPPORTED_VERSIONS:
            raise ValueError(
                f"{self.name}: rcc format version {version} is not supported; "
                f"supported: {', '.join(map(str, _SUPPORTED_VERSIONS))}"
            )
        for what, offset in (("tree", tree), ("data", data), ("names", names)):
            if not 0 <= offset <= len(self._buf):
                raise ValueError(f"{self.name}: {what} offset {offset} lies outside the {len(self._buf)}-byte file")
        return version, tree, data, names

    def _unpack(self, fmt: str, offset: int) -> tuple[int, ...]:
        if offset < 0 or offset + struct.calcsize(fmt) > len(self._buf):
            raise ValueError(f"{self.name}: truncated or damaged (read past the end at byte {offset})")
        return struct.unpack_from(fmt, self._buf, offset)

    def _name(self, offset: int) -> str:
        start = self._names + offset
        (length,) = self._unpack(">H", start)
        raw = self._buf[start + 6 : start + 6 + 2 * length]
        if len(raw) != 2 * length:
            raise ValueError(f"{self.name}: truncated name table at byte {start}")
        return raw.decode("utf-16-be")

    def _walk(self) -> None:
        stack: list[tuple[int, str]] = [(0, "")]
        seen: set[int] = set()
        while stack:
            index, parent = stack.pop()
            if index in seen:
                raise ValueError(f"{self.name}: the resource tree has a cycle at node {index}")
            seen.add(index)
            node = self._tree + index * self._node_size
            name_offset, flags = self._unpack(">iH", node)
            path = f"{parent}/{self._name(name_offset)}".lstrip("/") if index else ""
            if flags & FLAG_DIRECTORY:
                count, first = self._unpack(">ii", node + 6)
                stack.extend((child, path) for child in range(first + count - 1, first - 1, -1))
                continue
            territory, language, data_offset = self._unpack(">hhi", node + 6)
            (size,) = self._unpack(">I", self._data + data_offset)
            entry = RccEntry(path, self._data + data_offset, size, flags, territory, language)
            if entry.offset + 4 + size > len(self._buf):
                raise ValueError(f"{self.name}: entry {path!r} runs past the end of the file")
            # Localised variants share a path; keep the first (the locale-independent one comes first).
            self.entries.setdefault(path, entry)

    def names(self) -> list[str]:
        """Resource paths of all files, sorted."""
        return sorted(self.entries)

    def glob(self, pattern: str) -> list[str]:
        """Resource paths matching a shell pattern (``*`` crosses ``/``), sorted."""
        return [p for p in self.names() if fnmatch.fnmatchcase(p, pattern.lstrip(":/"))]

    def read(self, path: str) -> bytes:
        """The uncompressed bytes of one file.

        Raises:
            KeyError: no such entry (the message lists how to see the valid ones).
            ValueError: a damaged zlib stream, or a zstd entry (decompress it with Qt's rcc instead).
        """
        key = path.lstrip(":/")
        if key not in self.entries:
            raise KeyError(f"{self.name}: no entry {path!r}; {len(self.entries)} entries, see RccArchive.names()")
        entry = self.entries[key]
        start = entry.offset + 4
        raw = self._buf[start : start + entry.size]
        if entry.flags & FLAG_ZSTD:
            raise ValueError(
                f"{self.name}: {key} is zstd-compressed, which this reader does not decode; "
                "rebuild the .rcc with rcc --binary --compress-algo zlib"
            )
        if entry.flags & FLAG_ZLIB:
            (expected,) = struct.unpack_from(">I", raw, 0)
            try:
                data = zlib.decompress(raw[4:])
            except zlib.error as err:
                raise ValueError(f"{self.name}: {key}: damaged zlib data ({err})") from err
            if len(data) != expected:
                raise ValueError(f"{self.name}: {key}: {len(data)} bytes after decompression, header says {expected}")
            return data
        return raw

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and path.lstrip(":/") in self.entries
