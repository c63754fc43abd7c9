"""Container health check of the proxy: GET http://127.0.0.1:$PORT/healthz, exit 0 on a 2xx answer.

Standard library only, so the final image needs no curl. The path can be given as the first argument
(`/readyz` for readiness).
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
