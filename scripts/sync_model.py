#!/usr/bin/env python3
"""Sync the model named in .nexus_meta.json from S3 into model_repository/ (same as `nexus sync`).

Exit codes are listed in docs/errors.md; options: see `scripts/sync_model.py --help`.
"""

import sys

from nexusml.command.cli import main

if __name__ == "__main__":
    sys.exit(main(["sync", *sys.argv[1:]]))
