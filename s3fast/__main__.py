"""``python -m s3fast``: the command line (see :mod:`s3fast.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
