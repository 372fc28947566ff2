"""Prometheus metrics for `imgcls serve` (GET /metrics, text exposition format), one registry per app:

    imgcls_requests_total{endpoint, method, status}     every request, refusals by the guards included
    imgcls_request_duration_seconds{endpoint}           latency histogram
    imgcls_request_errors_total{endpoint}               5xx answers and unhandled exceptions
    imgcls_feedback_total{result}                       stored | already_present
    imgcls_model_info{model_uri, model_version, run_id} 1 (the served model)
    imgcls_model_version                                the registry version number (-1 when none)

`endpoint` is a route path of the app, or "other": a scanner probing random URLs cannot blow up the
number of series."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, model_uri: str, model_version: str | None, run_id: str | None):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "imgcls_requests", "HTTP requests", ["endpoint", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "imgcls_request_duration_seconds",
            "request latency",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "imgcls_request_errors", "5xx answers and unhandled exceptions", ["endpoint"], registry=self.registry
        )
        self.feedback = Counter("imgcls_feedback", "feedback submissions", ["result"], registry=self.registry)
        info = Info("imgcls_model", "the served model", registry=self.registry)
        info.info({"model_uri": model_uri, "model_version": model_version or "", "run_id": run_id or ""})
        version = Gauge(
            "imgcls_model_version",
            "registry version of the served model (-1: not from the registry)",
            registry=self.registry,
        )
        version.set(int(model_version) if model_version and model_version.isdigit() else -1)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Outermost ASGI layer: sees every answer, the guards' refusals included."""

    def __init__(self, app, metrics: Metrics, endpoints: set[str]):
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            status = 500
            raise
        finally:
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            if status >= 500:
                self.metrics.errors.labels(endpoint).inc()
