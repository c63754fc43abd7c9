"""Container health check of the proxy: GET http://127.0.0.1:$PORT<path>, exit 0 on a 2xx answer.

Standard library only, so the final image needs no curl. The image and compose pass `/readyz` (healthy
means ready to serve: Triton up, the model answering); without an argument it asks `/healthz` (alive).
"""

import os
import sys
import urllib.request

path = sys.argv[1] if len(sys.argv) > 1 else "/healthz"
url = f"http://127.0.0.1:{os.environ.get('PORT', '8080')}{path}"
try:
    with urllib.request.urlopen(url, timeout=3) as response:  # a fixed loopback URL
        sys.exit(0 if 200 <= response.status < 300 else 1)
except Exception as err:  # any failure means unhealthy
    print(f"unhealthy: {url}: {err}", file=sys.stderr)
    sys.exit(1)
