"""Prometheus metrics, written by hand in the text exposition format (version 0.0.4).

* ``megaclass_http_requests_total{method,route,status}`` (counter)
* ``megaclass_http_request_duration_seconds{route}`` (histogram)
* ``megaclass_decisions_total{operation,decision}`` (counter: known/unknown, accepted/rejected)
* ``megaclass_gallery_classes``, ``megaclass_gallery_templates`` (gauges, read at scrape time)
* ``megaclass_gallery_recall_at_1`` (gauge: the recall@1 the index was tuned to, on its probes)
* ``megaclass_gallery_live_recall_at_1`` and ``..._ci95_lower`` / ``..._ci95_upper`` (gauges:
  the rolling recall@1 of the index on *served* queries, each sampled query re-run as an
  exact search, see :mod:`megaclass.gallery.recall`; absent until a query was sampled),
  ``megaclass_gallery_live_recall_samples`` (gauge: sampled queries in the window)

``route`` is the route's path template (``/v1/classes/{label}``), never a raw path, so
labels cannot explode in number.

Example
-------
>>> m = Metrics(); m.observe("GET", "/healthz", 200, 0.001)
>>> "megaclass_http_requests_total" in m.render({"classes": 0, "templates": 0})
True
>>> 'megaclass_gallery_live_recall_at_1 0.985' in m.render({"live_recall_at_1": 0.985})
True
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict

_H = "megaclass_http_request_duration_seconds"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _esc(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_GAUGES = (  # (stats key, metric, help): what /metrics shows of the gallery when it has it
    ("classes", "megaclass_gallery_classes", "Enrolled classes."),
    ("templates", "megaclass_gallery_templates", "Stored templates."),
    ("recall_at_1", "megaclass_gallery_recall_at_1",
     "Recall@1 against exact search the index was tuned to, on its tuning probes."),
    ("live_recall_at_1", "megaclass_gallery_live_recall_at_1",
     "Rolling recall@1 against exact search on sampled served queries."),
    ("live_recall_ci95_lower", "megaclass_gallery_live_recall_ci95_lower",
     "Lower end of the live recall's 95 % interval."),
    ("live_recall_ci95_upper", "megaclass_gallery_live_recall_ci95_upper",
     "Upper end of the live recall's 95 % interval."),
    ("live_recall_samples", "megaclass_gallery_live_recall_samples",
     "Served queries re-run exactly in the live recall's window."),
)


def gallery_gauges(gallery) -> dict:
    """What :meth:`Metrics.render` shows of ``gallery``, from its ``stats()``: counts,
    tuned recall and live recall (an exact index reports 1.0 for both)."""
    s = gallery.stats()
    out = {key: s[key] for key, _, _ in _GAUGES if isinstance(s.get(key), int | float)}
    ci = s.get("live_recall_ci95")
    if isinstance(ci, list | tuple) and len(ci) == 2:
        out["live_recall_ci95_lower"], out["live_recall_ci95_upper"] = ci
    return out


def _number(value, integer: bool) -> str:
    return str(int(value)) if integer else f"{float(value):.6g}"


class Metrics:
    """Thread-safe counters and latency histograms."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self._hist: dict[str, list[int]] = {}
        self._sum: dict[str, float] = defaultdict(float)
        self._decisions: dict[tuple[str, str], int] = defaultdict(int)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(method, route, status)] += 1
            counts = self._hist.setdefault(route, [0] * (len(BUCKETS) + 1))
            counts[bisect.bisect_left(BUCKETS, seconds)] += 1
            self._sum[route] += seconds

    def decision(self, operation: str, decision: str, n: int = 1) -> None:
        with self._lock:
            self._decisions[(operation, decision)] += n

    def render(self, gallery: dict) -> str:
        """The exposition text; ``gallery`` (:func:`gallery_gauges`) gives the gallery's gauges."""
        out = ["# HELP megaclass_http_requests_total HTTP requests by method, route and status.",
               "# TYPE megaclass_http_requests_total counter"]
        with self._lock:
            for (method, route, status), n in sorted(self._requests.items()):
                out.append(f'megaclass_http_requests_total{{method="{_esc(method)}",route="{_esc(route)}",'
                           f'status="{status}"}} {n}')
            out += ["# HELP megaclass_http_request_duration_seconds Request latency by route.",
                    "# TYPE megaclass_http_request_duration_seconds histogram"]
            for route, counts in sorted(self._hist.items()):
                r = _esc(route)
                total = 0
                for bound, c in zip((*BUCKETS, float("inf")), counts, strict=True):
                    total += c
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    out.append(f'{_H}_bucket{{route="{r}",le="{le}"}} {total}')
                out.append(f'{_H}_sum{{route="{r}"}} {self._sum[route]:.6f}')
                out.append(f'{_H}_count{{route="{r}"}} {total}')
            out += ["# HELP megaclass_decisions_total Identify and verify outcomes.",
                    "# TYPE megaclass_decisions_total counter"]
            for (op, dec), n in sorted(self._decisions.items()):
                out.append(f'megaclass_decisions_total{{operation="{_esc(op)}",decision="{_esc(dec)}"}} {n}')
        for key, name, text in _GAUGES:
            if key in ("classes", "templates") or key in gallery:
                out += [f"# HELP {name} {text}", f"# TYPE {name} gauge",
                        f"{name} {_number(gallery.get(key, 0), integer=key in ('classes', 'templates'))}"]
        return "\n".join(out) + "\n"


class MetricsMiddleware:
    """ASGI middleware recording every HTTP request's status and latency."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - start)
