"""``python -m train recipe NAME [--scale tiny|demo|full] [-c CONFIG] [--out DIR] [--set KEY=VALUE …]``."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from train.recipes import RECIPES
from train.recipes.base import SCALES, RecipeContext, load_recipe_config, recipe_config_path

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:10s} {about}" for name, (_, about) in RECIPES.items())
    p = argparse.ArgumentParser(
        prog="python -m train recipe",
        description="Run a seed system's recipe end to end: its data, each training stage, the evaluation after each. "
        "Every stage writes its model and results to OUT/<stage>/; a rerun reuses finished stages and resumes "
        "an interrupted one from its last checkpoint.",
        epilog=f"recipes:\n{listing}\n\nconfigs: configs/recipes/NAME/SCALE.yaml (the full-scale file documents "
        "the paper's hyper-parameters).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", choices=sorted(RECIPES), metavar="NAME", help="recipe (see below)")
    p.add_argument("--scale", choices=SCALES, default="tiny", help="tiny: seconds, synthetic audio; demo: the demo's "
                   "real audio on a CPU; full: the paper's settings (default: tiny)")  # fmt: skip
    p.add_argument("-c", "--config", help="a recipe config instead of configs/recipes/NAME/SCALE.yaml")
    p.add_argument("--out", help="run folder (default: the config's out_dir)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted; VALUE is YAML), e.g. --set stages.vanilla.set.trainer.max_steps=20",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--list", action="store_true", help="list the recipes and their configs, then exit")
    return p


def main(args: list[str] | None = None) -> int:
    p = parser()
    parsed = p.parse_args(sys.argv[1:] if args is None else args)
    if parsed.list or parsed.name is None:
        for name, (_, about) in RECIPES.items():
            scales = [s for s in SCALES if recipe_config_path(name, s).is_file()]
            print(f"{name:10s} {about}\n{'':10s} scales: {', '.join(scales)}")
        return 0 if parsed.list else 2
    try:
        config = load_recipe_config(parsed.name, parsed.scale, parsed.config, parsed.set)
    except ValueError as err:
        p.error(str(err))
    out = Path(parsed.out or config.get("out_dir") or f"runs/recipes/{parsed.name}-{parsed.scale}")
    out.mkdir(parents=True, exist_ok=True)
    ctx = RecipeContext(
        parsed.name, parsed.scale, config, out, log=lambda line: print(line, flush=True), progress=not parsed.quiet
    )
    print(f"recipe {parsed.name} ({parsed.scale}) — {time.strftime('%Y-%m-%d %H:%M')} → {out}", flush=True)
    module = importlib.import_module(RECIPES[parsed.name][0])
    try:
        result = module.run(ctx)
    except (ValueError, FileNotFoundError) as err:  # bad config, input or a missing tool, named: no traceback
        p.exit(2, f"{p.prog}: error: {err}\n")
    if result.get("table"):
        print(result["table"])
    print(f"results: {out / 'results.json'}, {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
