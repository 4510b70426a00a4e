"""EngineServer: one backend behind a gRPC server with health and reflection, started and drained in
the right order; `serve(settings)` runs it as a process until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from services.common.grpc_server import GrpcServer, install_shutdown_signals
from services.common.metrics import MetricsServer
from services.engine.backends import create_backend
from services.engine.backends.base import GenerationBackend
from services.engine.service import EngineServicer
from services.engine.settings import EngineSettings
from switchyard.engine.v1 import engine_service_pb2 as engine_pb2
from switchyard.engine.v1 import engine_service_pb2_grpc as engine_pb2_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = engine_pb2.DESCRIPTOR.services_by_name["EngineService"].full_name


class EngineServer:
    """`start()`: the backend first, then the gRPC server, so health says SERVING only once the model
    is ready. `stop()`: health NOT_SERVING and new generations refused -> running generations get up
    to `grace` seconds -> the server stops -> the backend closes. A backend that turns unhealthy makes
    health NOT_SERVING for good."""

    def __init__(self, settings: EngineSettings, backend: GenerationBackend | None = None) -> None:
        self.settings = settings
        self.backend = backend if backend is not None else create_backend(settings)
        self._servicer = EngineServicer(self.backend)
        self._grpc: GrpcServer | None = None
        self._health_watch: asyncio.Task[None] | None = None
        self.metrics: MetricsServer | None = None

    @property
    def port(self) -> int:
        """The bound port (the OS's choice when settings.port is 0); known once started."""
        if self._grpc is None:
            raise RuntimeError("EngineServer.port is known only after start()")
        return self._grpc.port

    async def start(self) -> None:
        await self.backend.start()
        grpc_server = None
        try:
            grpc_server = GrpcServer([SERVICE_NAME], _address(self.settings.host, self.settings.port))
            engine_pb2_grpc.add_EngineServiceServicer_to_server(self._servicer, grpc_server.server)
            await grpc_server.start()
        except BaseException:
            if grpc_server is not None:
                await grpc_server.server.stop(0)
            await self.backend.close()
            raise
        self._grpc = grpc_server
        if self.settings.metrics_port is not None:
            self.metrics = MetricsServer(self.settings.host, self.settings.metrics_port)
        self._health_watch = asyncio.create_task(
            self._watch_backend_health(grpc_server), name="engine-health-watch"
        )

    async def stop(self, grace: float | None = None) -> None:
        grpc_server, self._grpc = self._grpc, None
        if grpc_server is None:
            return  # never started, or already stopped
        grace = self.settings.drain_grace_seconds if grace is None else grace
        if self._health_watch is not None:
            self._health_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_watch
        await grpc_server.set_serving(False)
        # The drain waits for generations only. `server.stop(grace)` alone would also wait out the
        # health Watch streams that routers keep open, which never end by themselves: every shutdown
        # would take the whole grace period.
        await self._servicer.drain(grace)
        await grpc_server.stop(0)
        await self.backend.close()
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

    async def _watch_backend_health(self, grpc_server: GrpcServer) -> None:
        while True:
            await asyncio.sleep(self.settings.health_check_interval_seconds)
            try:
                healthy = await self.backend.is_healthy()
            except Exception:
                logger.exception("backend health check failed")
                healthy = False
            if not healthy:
                logger.error("the %s backend is unhealthy: reporting NOT_SERVING", self.settings.backend)
                self._servicer.accepting = False
                await grpc_server.set_serving(False)
                return


def _address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"{host}:{port}"


async def serve(settings: EngineSettings) -> None:
    """Runs one engine until SIGTERM or SIGINT, then drains (settings.drain_grace_seconds)."""
    stop = asyncio.Event()
    install_shutdown_signals(stop)
    server = EngineServer(settings)
    await server.start()
    logger.info(
        "engine serving %s (%s backend) on %s",
        settings.served_model_name,
        settings.backend,
        _address(settings.host, server.port),
    )
    await stop.wait()
    logger.info("draining for up to %.0fs", settings.drain_grace_seconds)
    await server.stop()
    logger.info("engine stopped")
