"""``python -m benchmarks``: see :mod:`benchmarks.run` and ``benchmarks/README.md``."""

from __future__ import annotations

import sys

from .run import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
