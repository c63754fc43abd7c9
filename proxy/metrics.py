"""Prometheus text exposition, written by hand: a few counters and histograms, no dependency.

Each worker process keeps its own figures and labels them with `worker` (its index), so a scrape that
lands on one worker of several is still a consistent series; Prometheus sums them with `sum without
(worker)`. Label values come from a bounded set (route templates, status codes, error codes), never from
what a client sends.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in values)
    return "{" + ",".join(f'{n}="{v}"' for n, v in zip(names, escaped, strict=True)) + "}"


def _number(value: float) -> str:
    """Exact sample values: `:g` would print 1234567 as 1.23457e+06 and break rate() on busy counters."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Counter:
    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self, extra: tuple[str, str]) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        names = (*self.label_names, extra[0])
        for labels, value in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(names, (*labels, extra[1]))} {_number(value)}")
        return lines


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self.buckets = tuple(buckets)
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, value: float, *labels: str) -> None:
        series = self.series.get(labels)
        if series is None:
            # Per-bucket counts, then +Inf, then the sum.
            series = self.series[labels] = [0.0] * (len(self.buckets) + 2)
        series[bisect.bisect_left(self.buckets, value)] += 1
        series[-1] += value

    def render(self, extra: tuple[str, str]) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        names = (*self.label_names, extra[0], "le")
        base = (*self.label_names, extra[0])
        for labels, series in sorted(self.series.items()):
            running = 0.0
            for bound, count in zip((*self.buckets, "+Inf"), series[:-1], strict=True):
                running += count
                le = bound if isinstance(bound, str) else f"{bound:g}"
                lines.append(f"{self.name}_bucket{_labels(names, (*labels, extra[1], le))} {_number(running)}")
            lines.append(f"{self.name}_count{_labels(base, (*labels, extra[1]))} {_number(running)}")
            lines.append(f"{self.name}_sum{_labels(base, (*labels, extra[1]))} {_number(series[-1])}")
        return lines


class Metrics:
    """Everything one worker measures."""

    def __init__(self, worker: int, in_flight: Callable[[], int]) -> None:
        self.worker = ("worker", str(worker))
        self.in_flight = in_flight
        self.requests = Counter("nexus_proxy_requests_total", "HTTP requests by route and status", ("route", "status"))
        self.latency = Histogram(
            "nexus_proxy_request_duration_seconds", "time from request to response", LATENCY_BUCKETS, ("route",)
        )
        self.upstream_errors = Counter(
            "nexus_proxy_upstream_errors_total", "failed Triton calls by error code", ("code",)
        )
        self.upstream_latency = Histogram(
            "nexus_proxy_upstream_duration_seconds", "Triton inference calls", LATENCY_BUCKETS
        )
        self.batch_rows = Histogram(
            "nexus_proxy_upstream_batch_rows", "rows per inference request sent to Triton", BATCH_BUCKETS
        )

    def render(self) -> bytes:
        lines = [
            "# HELP nexus_proxy_in_flight predictions in progress",
            "# TYPE nexus_proxy_in_flight gauge",
            f"nexus_proxy_in_flight{_labels((self.worker[0],), (self.worker[1],))} {self.in_flight()}",
        ]
        for metric in (self.requests, self.latency, self.upstream_errors, self.upstream_latency, self.batch_rows):
            lines.extend(metric.render(self.worker))
        return ("\n".join(lines) + "\n").encode()
