"""Entry point: ``python -m workers.programs.tinygpt`` (what the supervisor runs)."""

import sys

from .train import main

if __name__ == "__main__":
    sys.exit(main())
