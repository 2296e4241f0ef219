"""``clapkit.progress.progress_bar``: whole lines in a log, the ordinary tqdm bar on a terminal."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import pytest
import tqdm.auto
import tqdm.std

from clapkit.progress import LOG_INTERVAL, progress_bar


class FakeClock:
    """tqdm's clock, advanced by hand: each step of the loop below takes ``step`` seconds."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(tqdm.std, "time", clock)  # read by every bar when it is created
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)  # no monitor thread on the real clock
    return clock


def run(stream: io.StringIO, clock: FakeClock, steps: int, step: float, **kwargs) -> None:
    for _ in progress_bar(range(steps), file=stream, desc="work", **kwargs):
        clock.now += step


def test_a_log_gets_a_bounded_number_of_whole_lines(clock):
    log = io.StringIO()
    run(log, clock, steps=100_000, step=0.01)  # 1000 s of fast steps
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text and text.endswith("\n")
    lines = text.splitlines()
    # One line when the bar opens, at most one per LOG_INTERVAL, and the final one.
    assert 10 <= len(lines) <= 1000 / LOG_INTERVAL + 2
    assert all(line.startswith("work:") for line in lines)
    assert "100000/100000" in lines[-1]


def test_a_log_gets_a_line_per_slow_step_and_none_for_empty_writes(clock):
    log = io.StringIO()
    run(log, clock, steps=3, step=LOG_INTERVAL * 2, leave=False)
    lines = log.getvalue().splitlines()
    assert len(lines) == 4 and all(lines)  # opening + 3 steps; leave=False clears nothing in a log


def test_a_terminal_gets_tqdm_as_usual(clock):
    term = Terminal()
    bar = progress_bar(total=5, file=term, desc="work", mininterval=0)
    assert type(bar) is tqdm.auto.tqdm and bar.mininterval == 0
    for _ in range(5):
        clock.now += 0.01
        bar.update(1)
    bar.close()
    text = term.getvalue()
    assert text.count("\r") >= 5 and text.count("\n") == 1  # redrawn in place, one newline when closed


def test_disabled_bars_write_nothing(clock):
    log = io.StringIO()
    run(log, clock, steps=10, step=100.0, disable=True)
    assert log.getvalue() == ""


def test_every_bar_of_the_project_goes_through_progress_bar():
    """A bare ``tqdm(...)`` would flood logs with carriage returns again; only clapkit.progress imports tqdm."""
    root = Path(__file__).resolve().parent.parent
    direct = set()
    for room in ("clapkit", "train", "retrieval", "demo"):
        for path in sorted((root / room).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                if any(n.split(".")[0] == "tqdm" for n in names):
                    direct.add(str(path.relative_to(root)))
    assert direct == {"clapkit/progress.py"}
