"""Prometheus metrics of one API process (text exposition format 0.0.4).

Counters and histograms are per process, as Prometheus expects of replicas;
the gauges (devices by state, rollout devices by state) are read from the
database when ``/metrics`` is scraped, so every replica reports the same.
"""

from __future__ import annotations

import threading
from collections import defaultdict

#: Upper bounds of the latency histogram, in seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _labels(**labels: str) -> str:
    quoted = (
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in labels.items()
    )
    return "{" + ",".join(quoted) + "}"


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self._buckets: dict[str, list[int]] = defaultdict(lambda: [0] * len(BUCKETS))
        self._sum: dict[str, float] = defaultdict(float)
        self._count: dict[str, int] = defaultdict(int)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(method, route, str(status))] += 1
            buckets = self._buckets[route]
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            self._sum[route] += seconds
            self._count[route] += 1

    def render(self, gauges: dict[str, dict[tuple[tuple[str, str], ...], int]]) -> str:
        lines = [
            "# HELP atoll_fleet_requests_total HTTP requests answered, by route and status.",
            "# TYPE atoll_fleet_requests_total counter",
        ]
        with self._lock:
            for (method, route, status), count in sorted(self._requests.items()):
                lines.append(
                    "atoll_fleet_requests_total"
                    + _labels(method=method, route=route, status=status)
                    + f" {count}"
                )
            lines += [
                "# HELP atoll_fleet_request_duration_seconds Time to answer, by route.",
                "# TYPE atoll_fleet_request_duration_seconds histogram",
            ]
            for route in sorted(self._count):
                for bound, count in zip(BUCKETS, self._buckets[route], strict=True):
                    lines.append(
                        "atoll_fleet_request_duration_seconds_bucket"
                        + _labels(route=route, le=repr(bound))
                        + f" {count}"
                    )
                name = "atoll_fleet_request_duration_seconds"
                lines.append(f"{name}_bucket{_labels(route=route, le='+Inf')} {self._count[route]}")
                lines.append(f"{name}_sum{_labels(route=route)} {self._sum[route]:.6f}")
                lines.append(f"{name}_count{_labels(route=route)} {self._count[route]}")
        for name, series in gauges.items():
            lines.append(f"# TYPE {name} gauge")
            for labels, value in sorted(series.items()):
                lines.append(f"{name}{_labels(**dict(labels))} {value}")
        return "\n".join(lines) + "\n"
