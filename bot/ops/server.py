"""`GET /metrics` and `GET /healthz` on METRICS_HOST:METRICS_PORT, for Prometheus and for
whatever restarts or alerts on the bot (a service manager, a load balancer, an uptime check).

One small aiohttp server on the bot's own event loop: a scrape reads the scheduler's line
where it lives, with no lock and no thread. Nothing here is written to the access log, since
a scrape every few seconds would drown the bot's own lines.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from bot.ops.metrics import Metrics

__all__ = ["HealthProbe", "MetricsServerError", "OpsServer"]

log = logging.getLogger(__name__)

HealthProbe = Callable[[], Awaitable[str | None]]
"""None when the bot is healthy; otherwise a short reason, in plain words."""


class MetricsServerError(Exception):
    """The server could not listen; `sentence` names the setting to change."""

    def __init__(self, sentence: str) -> None:
        super().__init__(sentence)
        self.sentence = sentence


class OpsServer:
    """The running server; `close` stops it. Build one with `await OpsServer.start(...)`."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self._runner = runner
        self.port = port

    @classmethod
    async def start(cls, host: str, port: int, metrics: Metrics, health: HealthProbe) -> OpsServer:
        """Listen at host:port, or raise MetricsServerError saying why it can't."""
        app = web.Application()
        app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
        app.router.add_get("/healthz", _healthz(health))
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise MetricsServerError(_cannot_listen(exc, port)) from exc
        log.info("metrics and health at http://%s:%d/metrics and /healthz", host, port)
        return cls(runner, port)

    async def close(self) -> None:
        await self._runner.cleanup()


def _healthz(health: HealthProbe) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def healthz(request: web.Request) -> web.Response:
        try:
            problem = await health()
        except Exception as exc:  # a bug in a check must still answer, and say "not healthy"
            log.exception("health check failed")
            problem = f"the health check itself failed ({type(exc).__name__})"
        headers = {"Cache-Control": "no-store"}
        if problem is None:
            return web.Response(text="ok\n", headers=headers)
        return web.Response(status=503, text=f"{problem}\n", headers=headers)

    return healthz


def _cannot_listen(exc: OSError, port: int) -> str:
    """Why the server can't listen, as one sentence naming the setting (the host is named by
    its setting only: it may be an internal name)."""
    if exc.errno == errno.EADDRINUSE:
        return (
            f"METRICS_PORT {port} is already in use on METRICS_HOST: stop the program "
            "listening there, or choose another METRICS_PORT (0 turns the metrics server off)."
        )
    if exc.errno == errno.EACCES:
        return (
            f"The bot may not listen on METRICS_PORT {port} (ports below 1024 need "
            "privileges): choose a port from 1024 up."
        )
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return (
            "METRICS_HOST is not an address of this machine: use 127.0.0.1, 0.0.0.0 or one "
            "of its own addresses."
        )
    reason = exc.strerror or type(exc).__name__
    return f"The metrics server couldn't listen at METRICS_HOST:METRICS_PORT ({reason})."
