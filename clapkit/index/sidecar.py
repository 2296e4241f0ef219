"""The SQLite sidecar: one metadata row per indexed window, keyed by the FAISS id, plus tombstones."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from clapkit.index.records import Entry

__all__ = ["Sidecar"]

# SQLite's default limit on bound parameters per statement is 32766; stay well below.
_SQL_CHUNK = 900

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    member TEXT,
    start_s REAL NOT NULL,
    end_s REAL,
    duration_s REAL,
    captions TEXT NOT NULL,
    labels TEXT NOT NULL,
    fields TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tombstones (id INTEGER PRIMARY KEY);
"""
_COLUMNS = "id, path, member, start_s, end_s, duration_s, captions, labels, fields"


class Sidecar:
    """SQLite metadata store; every call holds one lock, so the connection can be shared by threads."""

    def __init__(self, path: Path | None = None, *, read_only: bool = False) -> None:
        self.lock = threading.RLock()
        if path is None:
            self.conn = sqlite3.connect(":memory:", check_same_thread=False)
        elif read_only:
            self.conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        else:  # work on an in-memory copy; `save` writes a fresh file
            self.conn = sqlite3.connect(":memory:", check_same_thread=False)
            src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            src.backup(self.conn)
            src.close()
        if not read_only:
            self.conn.executescript(_SCHEMA)

    def insert(self, ids: np.ndarray, entries: Sequence[Entry]) -> None:
        rows = []
        for i, e in zip(ids.tolist(), entries):
            try:
                fields = json.dumps(e.fields) if e.fields else "{}"
            except TypeError as err:
                raise ValueError(f"{e.path or f'entry {i}'}: user fields are not JSON-serialisable ({err})") from None
            span = (float(e.start), _opt_float(e.end), _opt_float(e.duration))
            texts = (_json_list(e.captions), _json_list(e.labels))
            rows.append((i, str(e.path), e.member, *span, *texts, fields))
        with self.lock:
            self.conn.executemany(f"INSERT INTO entries ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", rows)

    def fetch(self, ids: Iterable[int]) -> dict[int, Entry]:
        ids = sorted({int(i) for i in ids if i >= 0})
        out: dict[int, Entry] = {}
        with self.lock:
            for s in range(0, len(ids), _SQL_CHUNK):
                part = ids[s : s + _SQL_CHUNK]
                sql = f"SELECT {_COLUMNS} FROM entries WHERE id IN ({','.join('?' * len(part))})"
                for row in self.conn.execute(sql, part):
                    out[row[0]] = _row_entry(row)
        return out

    def delete(self, ids: Sequence[int]) -> list[int]:
        present = sorted(self.fetch(ids))
        with self.lock:
            self.conn.executemany("DELETE FROM entries WHERE id = ?", [(i,) for i in present])
        return present

    def count(self) -> int:
        with self.lock:
            return int(self.conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def iter_entries(self) -> Iterator[tuple[int, Entry]]:
        with self.lock:
            rows = self.conn.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY id").fetchall()
        for row in rows:
            yield row[0], _row_entry(row)

    def tombstones(self) -> np.ndarray:
        with self.lock:
            return np.array([r[0] for r in self.conn.execute("SELECT id FROM tombstones")], dtype=np.int64)

    def add_tombstones(self, ids: Sequence[int]) -> None:
        with self.lock:
            self.conn.executemany("INSERT OR IGNORE INTO tombstones (id) VALUES (?)", [(int(i),) for i in ids])

    def commit(self) -> None:
        with self.lock:
            self.conn.commit()

    def rollback(self) -> None:
        with self.lock:
            self.conn.rollback()

    def backup_to(self, path: Path) -> None:
        dest = sqlite3.connect(path)
        try:
            with self.lock:
                self.conn.commit()
                self.conn.backup(dest)
        finally:
            dest.close()


def _json_list(items: Sequence[str]) -> str:
    return json.dumps(list(items)) if items else "[]"


def _opt_float(x: float | None) -> float | None:
    return None if x is None else float(x)


def _row_entry(row: tuple) -> Entry:
    _, path, member, start, end, duration, captions, labels, fields = row
    return Entry(path, start, end, duration, json.loads(captions), json.loads(labels), member, json.loads(fields))
