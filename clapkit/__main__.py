import sys

from clapkit.cli import main

sys.exit(main())
