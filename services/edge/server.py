"""EdgeServer: the edge app under uvicorn with start / port / stop, like the gRPC services' servers,
and `serve(settings)`, what `python -m services.edge` runs."""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn

from services.common.grpc_server import install_shutdown_signals
from services.common.metrics import MetricsServer
from services.edge.app import create_app
from services.edge.settings import EdgeSettings

logger = logging.getLogger(__name__)


class EdgeServer:
    """Binds its socket itself, so that `port` is known (settings.port 0: the OS chooses) before
    uvicorn starts; `start` returns once the app's lifespan has run and the socket accepts."""

    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app,
            http="httptools",
            lifespan="on",
            # The edge writes its own access line (with request id and tokens); logging is
            # configured by the process (services.common.runtime.configure_logging).
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        )
        self._server = uvicorn.Server(config)
        self._socket = socket.create_server((settings.host, settings.port), family=_family(settings.host))
        self.port: int = self._socket.getsockname()[1]
        self._main_loop: asyncio.Task[None] | None = None
        self.metrics: MetricsServer | None = None

    async def start(self) -> None:
        # What uvicorn.Server.serve() does, minus its signal handlers: the process owns the signals.
        config = self._server.config
        config.load()
        self._server.lifespan = config.lifespan_class(config)
        try:
            await self._server.startup(sockets=[self._socket])
        except SystemExit as error:  # uvicorn exits when the lifespan fails
            raise RuntimeError("the edge failed to start (see the log above)") from error
        self._main_loop = asyncio.create_task(self._server.main_loop())
        if self.settings.metrics_port is not None:
            self.metrics = MetricsServer(self.settings.host, self.settings.metrics_port)

    async def stop(self, grace: float | None = None) -> None:
        """Stops accepting, lets running requests finish for `grace` seconds (default from the
        settings), then cancels what is left and closes the router channel."""
        if grace is not None:
            self._server.config.timeout_graceful_shutdown = grace
        self._server.should_exit = True
        if self._main_loop is not None:
            await self._main_loop
            await self._server.shutdown(sockets=[self._socket])
        else:
            self._socket.close()
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def serve(settings: EdgeSettings) -> None:
    """Runs the edge until SIGTERM or SIGINT, then drains (settings.shutdown_grace_seconds)."""
    stop = asyncio.Event()
    install_shutdown_signals(stop)
    server = EdgeServer(settings)
    await server.start()
    logger.info("edge listening on http://%s:%d", settings.host, server.port)
    await stop.wait()
    logger.info("edge stopping")
    await server.stop()
