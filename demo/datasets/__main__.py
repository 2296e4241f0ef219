"""``python -m demo.datasets build|list …``: see ``demo.datasets.cli``."""

import sys

from demo.datasets.cli import main

if __name__ == "__main__":
    sys.exit(main())
