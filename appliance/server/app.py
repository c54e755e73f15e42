"""The Quart-Trio application: configuration, middleware (Host check, CORS), errors, serving.

Every error leaves the server as ``{"error": "..."}`` with a meaningful status; nothing a client
sends can raise past the handlers here.
"""

from __future__ import annotations

import logging
import math
import platform
import signal
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from quart import Response, current_app, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from appliance import OLLAMA_COMPAT_VERSION, __version__, envconfig
from appliance.engine import gpu
from appliance.engine.process import RUNNER_STOP_GRACE_S
from appliance.engine.scheduler import Scheduler
from appliance.errors import ApplianceError, public_message
from appliance.server import (
    anthropic,
    archive,
    auth,
    bodies,
    cloud,
    connections,
    models,
    native,
    openai,
    pipeline,
    requests_control,
    transfer,
)
from appliance.server import metrics as metrics_routes
from appliance.server import openapi as openapi_doc
from appliance.server import replicas as scale_out
from appliance.server import ui as chat_page
from appliance.server.requests import body_left_unread
from appliance.store.local import Store

log = logging.getLogger("appliance.server")

CORS_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
#: Request headers a browser may send cross-origin: a fixed list, never an echo of what is asked.
#: The OpenAI and Anthropic SDKs add their own (x-stainless-*, anthropic-*) even in a browser.
CORS_HEADERS = ", ".join((
    "Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With",
    "OpenAI-Beta", "OpenAI-Organization", "OpenAI-Project",
    "x-stainless-arch", "x-stainless-async", "x-stainless-custom-poll-interval",
    "x-stainless-helper-method", "x-stainless-lang", "x-stainless-os", "x-stainless-package-version",
    "x-stainless-poll-helper", "x-stainless-retry-count", "x-stainless-runtime",
    "x-stainless-runtime-version", "x-stainless-timeout", "x-stainless-read-timeout",
    "x-api-key", "anthropic-version", "anthropic-beta", "anthropic-dangerous-direct-browser-access",
))


def create_app(cfg: envconfig.Config, store: Store | None = None) -> QuartTrio:
    """Build the app for ``cfg``; ``store`` defaults to the one under ``cfg.models``."""
    app = QuartTrio("appliance")
    app.config["MAX_CONTENT_LENGTH"] = None  # JSON bodies are capped in read_json; blobs stream unbounded
    app.config["BODY_TIMEOUT"] = 600
    app.config["RESPONSE_TIMEOUT"] = None  # generations and pulls stream for as long as they take
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = 5
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.extensions["appliance.config"] = cfg
    app.extensions["appliance.store"] = store or Store(cfg.models_dir)
    app.extensions["appliance.scheduler"] = scheduler = Scheduler(cfg)
    # The request pipeline (README "Metrics, API keys and request control"): ids, metrics and the
    # access log wrap the whole app; keys are checked by a hook after the Host/Origin guard.
    app.extensions["appliance.api_keys"] = auth.load_keys(cfg)
    app.extensions["appliance.requests"] = requests_control.RequestTracker()
    app.extensions["appliance.metrics"] = metrics = metrics_routes.Metrics(scheduler)
    app.asgi_app = pipeline.RequestPipeline(app.asgi_app, metrics)  # type: ignore[method-assign]
    bodies.install(app)  # request bodies that push back: a blob upload never piles up in memory
    app.register_blueprint(models.bp)
    app.register_blueprint(native.bp)
    app.register_blueprint(openai.bp)
    app.register_blueprint(anthropic.bp)
    app.register_blueprint(transfer.bp)
    app.register_blueprint(archive.bp)
    app.register_blueprint(openapi_doc.bp)
    app.register_blueprint(cloud.bp)
    app.register_blueprint(metrics_routes.bp)
    app.register_blueprint(requests_control.bp)
    app.register_blueprint(scale_out.bp)

    @app.before_serving
    async def startup() -> None:
        st: Store = current_app.extensions["appliance.store"]
        if reason := await trio.to_thread.run_sync(st.decide_read_only, cfg.models_readonly):
            log.info("models folder is read-only (%s): serving only, nothing pruned", reason)
        else:
            await trio.to_thread.run_sync(st.ensure_dirs)
            # OLLAMA_NOPRUNE keeps unused blobs, never the dead temp files of a killed writer.
            await trio.to_thread.run_sync(st.prune, math.inf if cfg.noprune else 3600.0)
        scheduler.system = await trio.to_thread.run_sync(gpu.discover)
        scheduler.threads = scheduler.system.threads or scheduler.threads
        log.info(gpu.describe(scheduler.system))
        app.nursery.start_soon(_log_llama_backend)
        await app.nursery.start(scheduler.run)
        app.extensions[scale_out.SERVING] = True

    @app.after_serving
    async def shutdown() -> None:
        app.extensions[scale_out.SERVING] = False
        with trio.move_on_after(RUNNER_STOP_GRACE_S + 2):  # runners are killed once this passes
            await scheduler.aclose()

    app.before_request(pipeline.note_route)  # first: even a refused request is counted by its route

    @app.before_request
    async def guard() -> Response | None:
        if not envconfig.host_header_allowed(request.headers.get("Host", ""), cfg):
            return _error("host not allowed", 403)
        origin = request.headers.get("Origin")
        if origin and not _origin_allowed(origin, cfg):
            return _error("origin not allowed", 403)
        if request.method == "OPTIONS":
            return _cors(Response(b"", status=204))
        return None

    # After the guard (a refused Host or Origin gets no page); the page is for browsers only.
    app.before_request(chat_page.serve_page_to_browsers)
    app.after_request(chat_page.vary_on_accept)  # runs after add_cors, which sets Vary: Origin

    app.before_request(auth.require_key)  # after the guard and the CORS preflight, before any body read
    app.before_request(cloud.refuse_cloud_models)  # after the guard: a refused Host gets no body read
    app.before_request(scale_out.refuse_writes_to_read_only_store)  # after the guard, before any body

    @app.after_request
    async def add_cors(response: Response) -> Response:
        if body_left_unread():  # an early answer (413, 400, a blob we already have)
            response.headers["Connection"] = "close"
        return _cors(response)

    @app.errorhandler(ApplianceError)
    async def appliance_error(exc: ApplianceError) -> Response:
        if exc.status >= 500:
            log.error("%s %s: %s", request.method, request.path, exc)
        return _error(str(exc), exc.status)

    @app.errorhandler(RequestEntityTooLarge)
    async def too_large(_exc: RequestEntityTooLarge) -> Response:
        return _error(f"request body larger than {cfg.max_body_bytes} bytes", 413)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        text = "404 page not found" if status == 404 else (exc.description or exc.name)
        return _error(text, status)

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error(public_message(exc), 500)

    return app


def _error(message: str, status: int) -> Response:
    response = current_app.json.response({"error": message})
    assert isinstance(response, Response)  # Quart's JSON provider builds the app's response_class
    response.status_code = status
    return _cors(response)


def _origin_allowed(origin: str, cfg: envconfig.Config) -> bool:
    host = request.headers.get("Host", "")
    same_origin = origin in (f"http://{host}", f"https://{host}")
    return same_origin or envconfig.origin_allowed(origin, cfg.allowed_origins)


def _cors(response: Response) -> Response:
    """CORS headers, for an allowed origin only: a refused one gets its 403 and nothing to read it with."""
    response.headers["Vary"] = "Origin"
    origin = request.headers.get("Origin")
    if origin and _origin_allowed(origin, current_app.extensions["appliance.config"]):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
        response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
        response.headers["Access-Control-Max-Age"] = "43200"
    return response


def _hypercorn_config(cfg: envconfig.Config) -> HypercornConfig:
    hc = HypercornConfig()
    host, port = cfg.host.bind
    hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hc.accesslog = "-" if cfg.debug else None
    hc.errorlog = "-"
    hc.keep_alive_timeout = 65
    hc.graceful_timeout = 3
    return hc


def startup_banner(cfg: envconfig.Config) -> str:
    import distro

    from appliance._build import FLAVOR

    host, port = cfg.host.bind
    os_name = distro.name(pretty=True) or platform.system()
    return (f"ollama-appliance {__version__} ({FLAVOR} build, Ollama API {OLLAMA_COMPAT_VERSION}) "
            f"listening on {host}:{port}; models in {cfg.models_dir}; OS {os_name}; "
            f"Python {platform.python_version()}")


async def _log_llama_backend() -> None:
    """Log llama.cpp's backends and CPU features; off the start-up path (a GPU build may init its driver)."""
    from appliance._build import FLAVOR, llama_system_info

    try:
        info = await trio.to_thread.run_sync(llama_system_info, abandon_on_cancel=True)
    except OSError as exc:
        info = f"cannot load llama.cpp: {exc}"
    log.info("llama.cpp backend (%s build): %s", FLAVOR, info)


async def serve(cfg: envconfig.Config, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until SIGINT/SIGTERM, then shut down cleanly."""
    try:
        app = create_app(cfg)
    except auth.KeyFileError as exc:
        log.error("%s", exc)
        raise SystemExit(1) from None
    if not envconfig.is_loopback_bind(cfg) and not app.extensions["appliance.api_keys"].required:
        log.warning("listening on %s without API keys: anyone who can reach this port can use every model; "
                    "set OLLAMA_API_KEYS (see ollama serve --help)", cfg.host.host or "every interface")
    hc = _hypercorn_config(cfg)
    connections.install(cfg.max_connections, cfg.read_timeout_s)
    log.info(startup_banner(cfg))
    async with trio.open_nursery() as nursery:
        shutdown = trio.Event()

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("received %s, shutting down", signal.Signals(signum).name)
                    shutdown.set()
                    return

        nursery.start_soon(watch_signals)
        await hypercorn_serve(app, hc, shutdown_trigger=shutdown.wait, task_status=task_status)  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()
