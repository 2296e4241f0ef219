"""``python -m demo [-c configs/demo.yaml] [--fresh] [--quiet] [--section.key value …]``: the demo end to end.

The config is read through jsonargparse with ``demo.config.DemoConfig`` as the schema: ``--help`` lists every key,
``--print_config`` shows the resolved config, and any key can be set on the command line after ``-c``
(``--threads 4``, ``--train.steps 100``). Outputs go to the config's ``out_dir`` (``runs/demo``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from demo.config import DEFAULT_CONFIG, add_config_arguments, config_from_namespace
from demo.pipeline import Demo, fresh_start, quiet_libraries

__all__ = ["main", "parser"]


def parser() -> ArgumentParser:
    """The demo's command line: ``-c/--config``, ``--fresh``, ``--quiet`` and every config key."""
    p = ArgumentParser(
        prog="python -m demo",
        description="Train clapkit-small on real audio (debian-sounds) with infonce and compa_hardneg, evaluate both "
        "on held-out clips, scenes and compositional benchmarks, and search an index of the held-out clips. "
        "Finished steps are reused on the next run.",
    )
    add_config_arguments(p)
    p.add_argument("--fresh", action="store_true", help="delete the previous output folder and rebuild it all")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(args: list[str] | None = None) -> dict[str, Any]:
    args = sys.argv[1:] if args is None else list(args)
    if not any(a in ("-c", "--config") or a.startswith("--config=") for a in args):
        args = ["--config", DEFAULT_CONFIG, *args]  # first, so keys given on the command line override it
    p = parser()
    parsed = p.parse_args(args)
    try:
        config = config_from_namespace(p, parsed)
    except ValueError as err:
        p.error(str(err))
    if parsed.fresh:
        fresh_start(Path(config.out_dir))
    quiet_libraries(progress=not parsed.quiet)
    started = time.strftime("%Y-%m-%d %H:%M")
    source = parsed.config[0].relative if parsed.config else DEFAULT_CONFIG
    print(f"clapkit demo — {started} — config {source} → {config.out_dir}", flush=True)
    return Demo(config, progress=not parsed.quiet, log=lambda line: print(line, flush=True)).run()


if __name__ == "__main__":
    main()
