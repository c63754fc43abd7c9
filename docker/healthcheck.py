"""Container health check: GET http://127.0.0.1:<port><path>, exit 0 on a 2xx answer.

Standard library only, so the final image needs no curl. Arguments: the path (default `/healthz`) and the
port (default `$PORT`, else 8080). The image and compose's proxy pass `/readyz` (healthy means ready to serve:
Triton up, the model answering); compose's watcher passes `/metrics 9102` (its metrics endpoint answers).
"""

import os
import sys
import urllib.request

path = sys.argv[1] if len(sys.argv) > 1 else "/healthz"
port = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("PORT", "8080")
url = f"http://127.0.0.1:{port}{path}"
try:
    with urllib.request.urlopen(url, timeout=3) as response:  # a fixed loopback URL
        sys.exit(0 if 200 <= response.status < 300 else 1)
except Exception as err:  # any failure means unhealthy
    print(f"unhealthy: {url}: {err}", file=sys.stderr)
    sys.exit(1)
