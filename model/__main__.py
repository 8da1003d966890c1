"""``python -m model``: the same as the ``triage-model`` command, where it is not installed."""

import sys

from model.cli import main

if __name__ == "__main__":
    sys.exit(main())
