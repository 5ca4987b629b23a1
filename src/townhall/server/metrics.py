"""Prometheus metrics of townhall, defined once per process.

Names follow Prometheus conventions (``_total`` counters, base units). Every
bounded queue that drops, and every limit that refuses, counts it here.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("townhall_http_requests_total", "HTTP requests answered.", ["route", "status"])
PROBLEMS = Counter(
    "townhall_problems_total", "Requests answered with a problem+json error.", ["status"]
)
REQUEST_SECONDS = Histogram(
    "townhall_http_request_seconds",
    "Time to answer an HTTP request (headers sent).",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 6, 10),
)
JOINS = Counter("townhall_joins_total", "Listener tokens issued (joins and renewals).", ["kind"])
RATE_LIMITED = Counter(
    "townhall_rate_limited_total", "Requests refused by a rate limit.", ["limit"]
)
SPACES_LIVE = Gauge("townhall_spaces_live", "Spaces live on this node.")
