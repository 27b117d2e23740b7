"""What the gateway tells its operator: one access-log line per request, and Prometheus metrics on GET /metrics.

The metrics live in a registry of the gateway's own (never prometheus-client's global one, which
a library could add to). Their labels are bounded: a route is the template it matched
(`/v1/models/{model_id}`, never the path a client sent), or `(unmatched)`; a method outside
the few a route serves is `(other)`. So no client can grow the series without bound.
"""

from __future__ import annotations

import time

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

log = structlog.get_logger("llmos.gateway")

UNMATCHED = "(unmatched)"
METHODS = frozenset({"GET", "POST", "HEAD", "DELETE", "PUT", "OPTIONS"})
# From a quick models list to a long generation streamed whole (its latency is the whole stream's).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class GatewayMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("llmos_gateway_requests", "HTTP requests by route template, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("llmos_gateway_request_duration_seconds",
                                 "Request received to its answer's last byte (a stream's whole length)", ["route"],
                                 buckets=BUCKETS, registry=r)
        self.open_streams = Gauge("llmos_gateway_open_streams", "Streamed answers (SSE or NDJSON) being written",
                                  registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def route_of(routes, scope) -> str:
    """The template of the route the request matched (a wrong method still names it), else UNMATCHED."""
    for route in routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return getattr(route, "path", UNMATCHED)
    return UNMATCHED


async def metrics_route(request: Request):
    """GET /metrics: with API keys, one is needed (the figures are the gateway's traffic), unless the
    operator opened it for a scraper (`--open-metrics`: counts and latencies by route, no names)."""
    gateway = request.app.state.gateway
    if not gateway.settings.open_metrics:
        await gateway.identify(request)
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


class Observed:
    """One log line and the metrics per request: principal, status, tokens, duration; never the API key."""

    def __init__(self, app, metrics: GatewayMetrics, routes):
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [0]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        state = scope.setdefault("state", {})
        try:
            await self.app(scope, receive, sending)
        except BaseException:
            status[0] = status[0] or 500
            raise
        finally:
            elapsed = time.perf_counter() - start
            route = route_of(self.routes, scope)
            method = scope["method"] if scope["method"] in METHODS else "(other)"
            self.metrics.requests.labels(route, method, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            usage = state.get("usage") or {}
            log.info("gateway.request", method=scope["method"], path=scope["path"], status=status[0],
                     principal=state.get("principal"), user=(state.get("user") or "")[:64] or None,
                     prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
                     disconnected=state.get("disconnected", False), duration_ms=round(elapsed * 1000, 2))
