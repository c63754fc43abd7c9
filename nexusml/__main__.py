"""`python -m nexusml ...` is the `nexus` command (for environments where its script is not on PATH)."""

import sys

from nexusml.command.cli import main

sys.exit(main())
