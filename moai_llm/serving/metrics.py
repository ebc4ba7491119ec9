"""`/metrics` in Prometheus' text format (prometheus_client, one registry per app): HTTP requests by route and
status, tokens, requests by finish reason, the engines' queues, request latency and time to first token."""

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/")
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40)


class _EngineCollector:
    """Read at scrape time from each engine: waiting and running requests, tokens prefilled and generated."""

    def __init__(self, registry):
        self.registry = registry

    def collect(self):
        waiting = GaugeMetricFamily("moai_requests_waiting", "Requests waiting for a batch slot", labels=["model"])
        running = GaugeMetricFamily("moai_requests_running", "Requests being prefilled or decoded", labels=["model"])
        prompt = CounterMetricFamily("moai_prompt_tokens", "Prompt tokens prefilled", labels=["model"])
        generated = CounterMetricFamily("moai_generation_tokens", "Tokens generated", labels=["model"])
        steps = CounterMetricFamily("moai_decode_steps", "Batched decode steps", labels=["model"])
        for name, served in self.registry.models.items():
            stats = getattr(served.engine, "stats", dict)()
            waiting.add_metric([name], stats.get("waiting", 0))
            running.add_metric([name], stats.get("running", 0))
            prompt.add_metric([name], stats.get("prompt_tokens", 0))
            generated.add_metric([name], stats.get("tokens_generated", 0))
            steps.add_metric([name], stats.get("decode_steps", 0))
        yield from (waiting, running, prompt, generated, steps)


class ServerMetrics:
    def __init__(self, models):
        disable_created_metrics()  # the *_created series only double the output (vLLM turns them off too)
        self.registry = CollectorRegistry()
        self.http = Counter(
            "moai_http_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.finished = Counter(
            "moai_requests", "Generations ended, by finish reason", ["model", "finish_reason"], registry=self.registry
        )
        self.latency = Histogram(
            "moai_request_latency_seconds",
            "Seconds from a generation's submission to its end",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "moai_time_to_first_token_seconds",
            "Seconds from a generation's submission to its first token",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(models))

    def route(self, path: str) -> str:
        if path.startswith("/v1/models/"):
            return "/v1/models/{id}"
        return path if path in _ROUTES else "other"


class GenerationTracker:
    """One generation's timings, observed as its events reach the server's event loop."""

    def __init__(self, metrics: ServerMetrics, model: str):
        self.metrics, self.model = metrics, model
        self.start = time.perf_counter()
        self.first = False

    def token(self) -> None:
        if not self.first:
            self.first = True
            self.metrics.ttft.labels(self.model).observe(time.perf_counter() - self.start)

    def end(self, reason: str) -> None:
        self.metrics.finished.labels(self.model, reason).inc()
        self.metrics.latency.labels(self.model).observe(time.perf_counter() - self.start)
