"""Resumable steps: fingerprints, reuse of finished steps, timings and the log (the demo's and the recipes').

A step is a folder and a function that fills it. ``StepRunner.step`` runs the function unless the folder holds a
``.done.json`` marker written for the same fingerprint, in which case the recorded result is returned; a folder
without a matching marker (stale, or left half-finished by an interrupted run) is emptied and the step redone.
"""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any

from clapkit.io import atomic_write_json

__all__ = ["DONE", "STARTED", "StepRunner", "cpu_seconds", "fingerprint", "since"]

#: The marker a finished step leaves in its folder: ``{"fingerprint": …, "result": …}``.
DONE = ".done.json"
#: The marker a step leaves in its folder when it starts: ``{"fingerprint": …}`` (resumable steps go on from it).
STARTED = ".started.json"


def fingerprint(*parts: Any) -> str:
    """A short hash of ``parts`` as JSON; objects JSON cannot write (config dataclasses) are hashed by ``str``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (shard-writer processes)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def since(wall: float, cpu: float) -> dict[str, float]:
    """Wall and CPU seconds since ``time.perf_counter()`` was ``wall`` and ``cpu_seconds()`` was ``cpu``."""
    return {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(cpu_seconds() - cpu, 1)}


class StepRunner:
    """Runs steps, each reused when its folder holds a finished result of the same fingerprint.

    Args:
        log: Where progress lines go.
        keep_folders: Steps whose folder is kept when they are redone (the dataset builder reuses unchanged clips
            in its own folder).
    """

    def __init__(self, log: Callable[[str], None] = print, *, keep_folders: tuple[str, ...] = ("data",)) -> None:
        self.log = log
        self.keep_folders = keep_folders
        self.timings: dict[str, dict[str, Any]] = {}
        self._fingerprints: dict[str, str] = {}

    @property
    def fingerprints(self) -> Mapping[str, str]:
        """Step name → the fingerprint it last ran (or was reused) with; read-only."""
        return MappingProxyType(self._fingerprints)

    def record(self, name: str, fingerprint: str) -> None:
        """Record the fingerprint of an input that is not a step of its own (a given dataset folder)."""
        self._fingerprints[name] = fingerprint

    def adopt(self, name: str, fingerprint: str, timing: dict[str, Any]) -> None:
        """Take over a step that another process ran (or reused): its fingerprint and timing."""
        self._fingerprints[name] = fingerprint
        self.timings[name] = dict(timing)

    def step(
        self,
        name: str,
        fingerprint: str,
        folder: Path,
        run: Callable[[], dict[str, Any]],
        *,
        resumable: bool = False,
    ) -> dict[str, Any]:
        """Run ``run`` unless ``folder`` holds a finished result of the same fingerprint; time it.

        Args:
            resumable: A half-finished folder started with the same fingerprint is kept for ``run`` to go on
                from (a training step resuming from its last checkpoint); otherwise it is emptied first.

        Returns:
            The step's JSON-able result, as ``run`` returned it or as the marker recorded it.
        """
        self._fingerprints[name] = fingerprint
        marker = folder / DONE
        if marker.is_file():
            done = json.loads(marker.read_text())
            if done.get("fingerprint") == fingerprint:
                self.log(f"[{name}] reused ({folder})")
                self.timings[name] = {"wall_s": 0.0, "cpu_s": 0.0, "reused": True}
                return done["result"]
        started = folder / STARTED
        same_start = started.is_file() and json.loads(started.read_text()).get("fingerprint") == fingerprint
        if folder.exists() and name not in self.keep_folders and not (resumable and same_start):
            shutil.rmtree(folder)  # a stale or half-finished step is redone from nothing
        folder.mkdir(parents=True, exist_ok=True)
        marker.unlink(missing_ok=True)  # a stale marker must not survive a redo that is interrupted
        atomic_write_json(started, {"fingerprint": fingerprint})
        self.log(f"[{name}] …" if not (resumable and same_start) else f"[{name}] resuming in {folder}")
        wall, cpu = time.perf_counter(), cpu_seconds()
        result = run()
        took = since(wall, cpu)
        self.timings[name] = took
        atomic_write_json(marker, {"fingerprint": fingerprint, "result": result})
        self.log(f"[{name}] done in {took['wall_s']:.1f} s wall, {took['cpu_s']:.1f} s CPU")
        return result

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Time a block that is not a reusable step (evaluation, search) under ``name`` in ``timings``."""
        wall, cpu = time.perf_counter(), cpu_seconds()
        yield
        self.timings[name] = since(wall, cpu)
