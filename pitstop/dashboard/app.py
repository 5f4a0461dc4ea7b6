"""The dashboard's web application: two pages and their JSON endpoints (docs/dashboard.md), all GETs.

``GET /`` the fleet page, ``GET /models/{model}`` a model's page; ``GET /api/fleet``, ``GET /api/models/{model}``,
``GET /api/models/{model}/versions/{version}/trail`` their documents; ``GET /static/plotly.min.js`` the charting
library from the installed ``plotly`` package. An unknown model or version answers 404 and a database that does not
answer 503, each with ``{"error": "<one sentence>"}`` (the pages show it in place of their figures).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import plotly
import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

from feedback.config import MonitoringConfig
from feedback.store import connect_kwargs
from pitstop import queries
from pitstop.dashboard import data

log = logging.getLogger(__name__)

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
#: seconds a page waits between two refreshes of its document
REFRESH_S = 5


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS, default=str)


def _error(status: int, sentence: str) -> JSONResponse:
    return JSONResponse({"error": sentence}, status_code=status)


def build_app(database_url: str, schema: str, config: MonitoringConfig, *, wait_s: float = 3.0) -> Starlette:
    """The dashboard over the store in ``schema``, for the models of ``config``; a request waits at most ``wait_s``
    for a connection before it answers 503."""
    pools: list[ConnectionPool] = []  # the running server's (a server that failed to start closed its own)
    page = resources.files("pitstop.dashboard").joinpath("page.html").read_text().replace(
        "{{REFRESH_MS}}", str(REFRESH_S * 1000))

    def read(fn: Any, *args: Any) -> JSONResponse:
        try:
            with pools[-1].connection() as conn:
                return JSONResponse(fn(conn, *args))
        except data.UnknownModel as exc:
            return _error(404, str(exc))
        except (psycopg.OperationalError, PoolTimeout) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return _error(503, f"the feedback store does not answer ({first}); the page tries again by itself")

    def fleet(request: Request) -> Response:
        return read(data.fleet, config)

    def model(request: Request) -> Response:
        return read(data.model_page, config, request.path_params["model"])

    def trail(request: Request) -> Response:
        name, version = request.path_params["model"], request.path_params["version"]

        def rows(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
            found = conn.execute(queries.TRAIL, (name, version)).fetchall()
            if not found:
                msg = f"{name} {version} is not in the registry: it has no trail"
                raise data.UnknownModel(msg)
            return [dict(zip(("recorded_at", "at", "step", "sentence"), r, strict=True)) for r in found]

        return read(rows)

    def fleet_page(request: Request) -> Response:
        return HTMLResponse(page)

    def model_page(request: Request) -> Response:
        name = request.path_params["model"]
        if config.model(name) is None:
            known = ", ".join(sorted(config.models)) or "none"
            return HTMLResponse(f"<!doctype html><title>Pitstop</title><p>No model {_escape(name)!s} in the "
                                f"configuration (configured: {_escape(known)}).</p>", status_code=404)
        return HTMLResponse(page)

    def plotly_js(request: Request) -> Response:
        return FileResponse(PLOTLY_JS, media_type="text/javascript")

    routes = [
        Route("/", fleet_page), Route("/models/{model}", model_page),
        Route("/api/fleet", fleet), Route("/api/models/{model}", model),
        Route("/api/models/{model}/versions/{version}/trail", trail),
        Route("/static/plotly.min.js", plotly_js),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = ConnectionPool(database_url, min_size=0, max_size=4, kwargs=connect_kwargs(schema), timeout=wait_s,
                              open=False, name="pitstop-dashboard", reconnect_timeout=0)
        pool.open(wait=False)  # a database that is down is the page's to say, not a failed start
        pools.append(pool)
        try:
            yield
        finally:
            pool.close()

    return Starlette(routes=routes, lifespan=lifespan)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


class Served:
    """A dashboard served by uvicorn from a thread of this process: its address, and how to stop it."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0) -> None:
        import threading

        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="pitstop-dashboard", daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                msg = f"the dashboard could not listen on {host}:{port}"
                raise OSError(msg)
            self.thread.join(0.05)
        bound = self.server.servers[0].sockets[0].getsockname()
        self.url = f"http://{host}:{bound[1]}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
