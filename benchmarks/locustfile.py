"""Locust user for the proxy's JSON API: `POST /predict`, checked for an `output` field.

Headless (as `python -m benchmarks` runs it):
    locust -f benchmarks/locustfile.py --headless -u 64 -r 64 -t 30s --host http://127.0.0.1:8080
With the web UI (http://localhost:8089), against a running `make run`:
    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8080

Environment: `BENCH_BODY` (the request body; default the README's one-row example), `BENCH_BODY_FILE`
(the body read from a file instead, for bodies too large for the environment), and `BENCH_THINK_S`
(seconds each user waits between requests; default 0, a closed loop like wrk and perf_analyzer).
"""

from __future__ import annotations

import os

from locust import FastHttpUser, constant, task

if os.environ.get("BENCH_BODY_FILE"):
    with open(os.environ["BENCH_BODY_FILE"], "rb") as body_file:
        BODY = body_file.read().decode()
else:
    BODY = os.environ.get("BENCH_BODY", '{"input": [1, 2, 3, 4, 5]}')
THINK_S = float(os.environ.get("BENCH_THINK_S", "0"))


class PredictUser(FastHttpUser):
    wait_time = constant(THINK_S)

    @task
    def predict(self) -> None:
        with self.client.post(
            "/predict", data=BODY, headers={"Content-Type": "application/json"}, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200] if response.text else ''}")
            elif b'"output"' not in (response.content or b""):
                response.failure("answer has no 'output'")
            else:
                response.success()
