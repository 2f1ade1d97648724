"""dpnet-serve's own Prometheus metrics, through ``ray.serve.metrics``.

Ray exports them with its own (``ray_`` prefix) on each node's metrics port
(``dpnet-serve --metrics-port``; Ray adds the deployment, replica and application tags):

- ``ray_dpnet_requests_total{route, class_name, status}``: answered requests;
- ``ray_dpnet_request_errors_total{route, class_name, status}``: those answered 4xx/5xx;
- ``ray_dpnet_request_latency_ms{route, class_name}``: a histogram, from the ingress's view
  (upload included);
- ``ray_dpnet_support_cache_hits_total`` / ``..._misses_total{class_name}``: queries whose
  class's support set a query-head replica had cached, or had to load.

``class_name`` is set only for registered classes (an unknown name counts as ``""``), so a
client cannot grow the number of series. Recording costs microseconds, once per request, after
the answer has been handed over (:class:`~dpnet_serve.guard.RequestGuard` schedules it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, cast

from ray.serve.metrics import Counter, Histogram

__all__ = ["LATENCY_BOUNDARIES_MS", "CacheMetrics", "RequestMetrics"]

LATENCY_BOUNDARIES_MS: Final = [
    5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
]  # fmt: skip


class RequestMetrics:
    """Request count, error count and latency by route and class (the ingress records them).

    Args:
        known_class: True for a registered class name (the others are tagged ``""``).
    """

    def __init__(self, known_class: Callable[[str], bool]) -> None:
        self._known_class = known_class
        tags: Any = ("route", "class_name", "status")  # Ray's stubs allow one key only
        self._requests = Counter("dpnet_requests", "Answered requests.", tag_keys=tags)
        self._errors = Counter(
            "dpnet_request_errors", "Requests answered with 4xx or 5xx.", tag_keys=tags
        )
        self._latency = Histogram(
            "dpnet_request_latency_ms",
            "Time from the request's arrival at the ingress to its answer (ms).",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=cast(Any, ("route", "class_name")),
        )

    def observe(self, scope: dict[str, Any], status: int, seconds: float) -> None:
        """Record one answered request (``scope`` as routed by FastAPI)."""
        route = getattr(scope.get("route"), "path", "") or "unrouted"
        name = str(scope.get("path_params", {}).get("name", ""))
        class_name = name if name and self._known_class(name) else ""
        tags = {"route": route, "class_name": class_name, "status": str(status)}
        self._requests.inc(tags=tags)
        if status >= 400:
            self._errors.inc(tags=tags)
        self._latency.observe(seconds * 1e3, tags={"route": route, "class_name": class_name})


class CacheMetrics:
    """Support-cache hits and misses of a query-head replica, counted per query."""

    def __init__(self) -> None:
        self._hits = Counter(
            "dpnet_support_cache_hits",
            "Queries whose class's support set the query-head replica had cached.",
            tag_keys=("class_name",),
        )
        self._misses = Counter(
            "dpnet_support_cache_misses",
            "Queries whose class's support set the query-head replica had to load.",
            tag_keys=("class_name",),
        )

    def record(self, class_name: str, *, missed: bool, queries: int) -> None:
        """One batch of ``queries`` of a class: the first missed when the set was loaded."""
        tags = {"class_name": class_name}
        if missed:
            self._misses.inc(tags=tags)
        if queries - missed:
            self._hits.inc(queries - missed, tags=tags)
