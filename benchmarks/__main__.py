"""`python -m benchmarks`: the full side-by-side run (see `benchmarks/run.py`)."""

import sys

from benchmarks.run import main

sys.exit(main())
