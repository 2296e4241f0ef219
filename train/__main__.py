"""``python -m train <app> <fit|validate|…> -c <config.yaml>``: dispatch to an app's LightningCLI."""

from __future__ import annotations

import importlib
import sys

#: App name → module defining ``main(args: list[str]) -> None`` (its LightningCLI).
APPS: dict[str, str] = {"clap": "train.clap", "lalm": "train.lalm", "recipe": "train.recipes.cli"}

USAGE = """usage: python -m train APP [SUBCOMMAND] [-c CONFIG.yaml] [--section.key value ...]

apps:
  clap   contrastive audio-text training (configs/clap/*.yaml)
  lalm   audio-language model training (configs/lalm/*.yaml)
  recipe a seed system's recipe end to end, stage after stage (configs/recipes/NAME/SCALE.yaml)

Each app is a LightningCLI: `python -m train clap fit --help` lists every option, and
`python -m train clap fit -c configs/clap/vanilla.yaml --print_config` shows the resolved config.
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    app, rest = argv[0], argv[1:]
    if app not in APPS:
        print(
            f"python -m train: unknown app {app!r}; valid apps: {', '.join(sorted(APPS))}\n\n{USAGE}", file=sys.stderr
        )
        return 2
    try:
        module = importlib.import_module(APPS[app])
    except ModuleNotFoundError as err:
        if err.name != APPS[app]:
            raise
        print(
            f"python -m train: app {app!r} is not installed in this checkout ({APPS[app]} is missing)", file=sys.stderr
        )
        return 2
    code = module.main(rest)
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
