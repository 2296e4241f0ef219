"""Progress bars that stay readable in log files.

On a terminal (or in a notebook) :func:`progress_bar` is ``tqdm.auto.tqdm``. When its stream is not a
terminal (a CI log, ``make demo > log``), tqdm would still redraw its line with a carriage return several
times a second, which a log keeps as thousands of updates on one enormous line; there the bar is written as
one plain line at most every ``LOG_INTERVAL`` seconds, plus the final line when it closes.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import IO, Any

import tqdm.auto
import tqdm.std

__all__ = ["LOG_INTERVAL", "is_terminal", "progress_bar"]

LOG_INTERVAL = 10.0  # s between two lines of a bar in a log
_CURSOR_MOVES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # tqdm moves the cursor up to redraw nested bars


class _LineStream:
    """A text stream for tqdm that writes each of its redraws as a line of its own.

    tqdm writes ``"\\r" + status + padding`` per redraw and bare ``"\\n"`` / ``"\\r"`` / cursor moves to
    position and clear bars; the status becomes a line, the rest is dropped.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = _CURSOR_MOVES.sub("", text).replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    @property
    def encoding(self) -> str | None:
        return getattr(self.stream, "encoding", None)

    def isatty(self) -> bool:
        return False


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (``False`` for files, pipes and closed streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _in_notebook() -> bool:
    # tqdm.auto picked its notebook widget bar; a notebook's stderr is no terminal but shows widgets fine.
    return tqdm.auto.notebook_tqdm is not tqdm.std.tqdm


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm.std.tqdm:
    """A ``tqdm.auto.tqdm`` bar that writes plain lines when its stream is not a terminal.

    Args:
        iterable: What to iterate over, as for ``tqdm``; ``None`` for a bar driven by ``update``.
        **kwargs: ``tqdm`` options (``total``, ``desc``, ``unit``, ``disable``, ``file``, …). Off a terminal,
            ``mininterval`` (the least time between two lines) defaults to ``LOG_INTERVAL`` seconds.
    """
    stream = kwargs.get("file") or sys.stderr
    if not is_terminal(stream) and not _in_notebook():
        kwargs["file"] = _LineStream(stream)
        kwargs.setdefault("mininterval", LOG_INTERVAL)
        # tqdm's monitor thread redraws a bar that has been quiet for maxinterval; no sooner than a line is due.
        kwargs["maxinterval"] = max(kwargs.get("maxinterval", LOG_INTERVAL), kwargs["mininterval"])
        kwargs.pop("dynamic_ncols", None)  # a log has no width to follow
    return tqdm.auto.tqdm(iterable, **kwargs)
