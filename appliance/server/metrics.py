"""Prometheus metrics at ``GET /metrics`` (the ``prometheus-client`` library's text format).

Each app has its own :class:`~prometheus_client.CollectorRegistry`, so two apps in one process
never share (or double-register) a series.  What is counted, and where:

* HTTP requests by method, route template and status, and their latency (the whole response,
  streamed bodies included): :mod:`appliance.server.pipeline`, for every request.
* Time to first token, tokens per second, prompt and generated tokens, per model: the generations
  (:mod:`appliance.server.requests_control` passes them on from :mod:`appliance.server.inference`).
* Queue depth, loaded models and their memory, runner starts and crashes: read from the
  scheduler's :meth:`~appliance.engine.scheduler.Scheduler.statistics` at each scrape.
* Bytes pulled from registries: the pull route's transfer settings.

Route labels are rule templates (``/v1/models/<path:name>``), never raw paths, so a scanner
probing random URLs adds one ``unmatched`` series, not one per URL.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from quart import Blueprint, Response, current_app

from appliance.engine.scheduler import Scheduler

bp = Blueprint("metrics", __name__)

#: Route label of a request no route matched (404s, probes).
UNMATCHED = "unmatched"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
TOKENS_PER_SECOND_BUCKETS = (1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 500, 1000)


class SchedulerCollector(Collector):
    """The scheduler's state, read when scraped."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        stats = self.scheduler.statistics()
        yield GaugeMetricFamily("ollama_queue_depth", "Requests waiting for a model slot (loading included)",
                                value=stats.waiting)
        yield GaugeMetricFamily("ollama_models_loaded", "Runner processes with a model loaded",
                                value=len(stats.loaded))
        memory = GaugeMetricFamily("ollama_model_memory_bytes", "Estimated memory of each loaded model",
                                   labels=["model"])
        vram = GaugeMetricFamily("ollama_model_vram_bytes", "Estimated VRAM share of each loaded model",
                                 labels=["model"])
        totals: dict[str, tuple[int, int]] = {}
        for loaded in stats.loaded:  # one model under two sets of load options: two runners, one sum
            size, in_vram = totals.get(loaded.model, (0, 0))
            totals[loaded.model] = (size + loaded.estimated_bytes, in_vram + loaded.vram_bytes)
        for model, (size, in_vram) in totals.items():
            memory.add_metric([model], size)
            vram.add_metric([model], in_vram)
        yield memory
        yield vram
        starts = CounterMetricFamily("ollama_runner_starts", "Runner processes started", labels=["model"])
        for model, count in stats.runner_starts:
            starts.add_metric([model], count)
        yield starts
        crashes = CounterMetricFamily("ollama_runner_crashes",
                                      "Runner processes that exited without being asked to", labels=["model"])
        for model, count in stats.runner_crashes:
            crashes.add_metric([model], count)
        yield crashes


class Metrics:
    """One app's metrics and the registry that exposes them."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter("ollama_http_requests", "HTTP requests answered, by route and status",
                                ["method", "route", "status"], registry=registry)
        self.latency = Histogram("ollama_http_request_duration_seconds",
                                 "Time from a request's arrival to the end of its response body",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.first_token = Histogram("ollama_time_to_first_token_seconds",
                                     "Time from a generation's start (queue and load included) to its "
                                     "first token", ["model"], buckets=FIRST_TOKEN_BUCKETS, registry=registry)
        self.tokens_per_second = Histogram("ollama_generation_tokens_per_second",
                                           "Decoding speed of each finished generation", ["model"],
                                           buckets=TOKENS_PER_SECOND_BUCKETS, registry=registry)
        self.prompt_tokens = Counter("ollama_prompt_tokens", "Prompt tokens evaluated", ["model"],
                                     registry=registry)
        self.generated_tokens = Counter("ollama_generated_tokens", "Tokens generated", ["model"],
                                        registry=registry)
        self.pull_bytes = Counter("ollama_pull_bytes", "Bytes downloaded from registries by pulls",
                                  registry=registry)
        registry.register(SchedulerCollector(scheduler))

    def observe_request(self, method: str, route: str | None, status: int, seconds: float) -> None:
        route = route or UNMATCHED
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def observe_first_token(self, model: str, seconds: float) -> None:
        self.first_token.labels(model).observe(seconds)

    def observe_generation(self, model: str, prompt_tokens: int, generated_tokens: int, eval_ns: int) -> None:
        self.prompt_tokens.labels(model).inc(max(0, prompt_tokens))
        self.generated_tokens.labels(model).inc(max(0, generated_tokens))
        if generated_tokens > 0 and eval_ns > 0:
            self.tokens_per_second.labels(model).observe(generated_tokens / (eval_ns / 1e9))

    def count_pulled(self, n: int) -> None:
        self.pull_bytes.inc(n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def get_metrics() -> Metrics:
    return current_app.extensions["appliance.metrics"]  # type: ignore[no-any-return]


@bp.get("/metrics")
async def metrics() -> Response:
    return Response(get_metrics().exposition(), content_type=CONTENT_TYPE_LATEST)
