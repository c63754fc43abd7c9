"""`python -m proxy`: the proxy with settings from this process's environment (the only reader of it)."""

from __future__ import annotations

import os
import sys

from nexusml.core.errors import NexusError
from nexusml.core.settings import load
from proxy.server import serve
from proxy.settings import ProxySettings


def main() -> int:
    try:
        settings = load(ProxySettings, os.environ)
    except NexusError as err:
        print(f"proxy: error: {err}", file=sys.stderr)
        return err.exit_code
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
