"""The router process: RouterService on a GrpcServer (health, reflection, error mapping), the replica
pool's health watches and load polls, and the registry file watch."""

from __future__ import annotations

import asyncio
import logging

from services.common.grpc_server import GrpcServer, install_shutdown_signals
from services.router.dispatch import Dispatcher
from services.router.registry import RegistryFile
from services.router.replicas import ReplicaChooser, ReplicaPool
from services.router.service import SERVICE_NAME, RouterServicer, add_to_server
from services.router.settings import RouterSettings

logger = logging.getLogger(__name__)


class RouterServer:
    """`RouterServer(settings)`; `await start()`; `.port` is the bound port (settings.port 0: the OS
    chooses); `await stop(grace)`. A registry file that cannot be loaded fails the constructor."""

    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.registry = RegistryFile(settings.registry_path)
        self.pool = ReplicaPool(settings.replicas)
        self.pool.sync(self.registry.current.replica_addresses())
        self.chooser = ReplicaChooser(self.pool, settings.replicas)
        self.servicer = RouterServicer(
            settings, self.registry, self.chooser, Dispatcher(self.chooser, settings.retry)
        )
        self._grpc = GrpcServer([SERVICE_NAME], f"{settings.host}:{settings.port}")
        add_to_server(self.servicer, self._grpc.server)
        self.port = self._grpc.port
        self._registry_watch: asyncio.Task | None = None

    async def start(self) -> None:
        await self.pool.start()
        if self.settings.registry_poll_interval > 0:
            self._registry_watch = asyncio.create_task(self._watch_registry(), name="registry-watch")
        await self._grpc.start()

    async def stop(self, grace: float | None = None) -> None:
        await self._grpc.stop(self.settings.drain_grace_seconds if grace is None else grace)
        if self._registry_watch is not None:
            self._registry_watch.cancel()
            await asyncio.gather(self._registry_watch, return_exceptions=True)
        await self.pool.close()

    def reload_registry(self) -> bool:
        """Re-reads the registry file if it changed and brings the replicas in line; True if it did."""
        if not self.registry.refresh():
            return False
        retired = self.pool.sync(self.registry.current.replica_addresses())
        self.chooser.forget(retired)
        return True

    async def _watch_registry(self) -> None:
        while True:
            await asyncio.sleep(self.settings.registry_poll_interval)
            self.reload_registry()


async def serve(settings: RouterSettings) -> None:
    """Runs the router until SIGTERM or SIGINT, then drains."""
    server = RouterServer(settings)
    await server.start()
    logger.info(
        "router serving on %s:%d: %d models from %s",
        settings.host,
        server.port,
        len(server.registry.current.models),
        settings.registry_path,
    )
    stop = asyncio.Event()
    install_shutdown_signals(stop)
    await stop.wait()
    logger.info("router draining")
    await server.stop()
