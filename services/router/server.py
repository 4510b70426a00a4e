"""The router process: RouterService and AccountsService on a GrpcServer (health, reflection, error
mapping), the replica pool's health watches and load polls, the registry file watch, and the
accounting state (keys, credits, limits, the request log, the response cache)."""

from __future__ import annotations

import asyncio
import logging

from services.common.grpc_server import GrpcServer, install_shutdown_signals
from services.common.metrics import MetricsServer
from services.router.accounting import Accounting
from services.router.accounting.service import SERVICE_NAME as ACCOUNTS_SERVICE_NAME
from services.router.accounting.service import AccountsServicer
from services.router.dispatch import Dispatcher
from services.router.metering import Metering
from services.router.registry import RegistryFile
from services.router.replicas import ReplicaChooser, ReplicaPool
from services.router.service import SERVICE_NAME, RouterServicer, add_to_server
from services.router.settings import RouterSettings
from switchyard.router.v1 import accounts_service_pb2_grpc as accounts_grpc

logger = logging.getLogger(__name__)


class RouterServer:
    """`RouterServer(settings)`; `await start()`; `.port` is the bound port (settings.port 0: the OS
    chooses); `await stop(grace)`. A registry file that cannot be loaded fails the constructor, a
    database that cannot be reached (or migrated) fails `start`. `accounting` is None when
    settings.accounting.enabled is false."""

    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.registry = RegistryFile(settings.registry_path)
        self.pool = ReplicaPool(settings.replicas)
        self.pool.sync(self.registry.current.replica_addresses())
        self.chooser = ReplicaChooser(self.pool, settings.replicas)
        self.accounting = Accounting(settings.accounting) if settings.accounting.enabled else None
        self.servicer = RouterServicer(
            settings,
            self.registry,
            self.chooser,
            Dispatcher(self.chooser, settings.retry),
            Metering(self.accounting, reveal_model_names=settings.reveal_model_names),
        )
        services = [SERVICE_NAME] if self.accounting is None else [SERVICE_NAME, ACCOUNTS_SERVICE_NAME]
        self._grpc = GrpcServer(services, f"{settings.host}:{settings.port}")
        add_to_server(self.servicer, self._grpc.server)
        if self.accounting is not None:
            accounts_grpc.add_AccountsServiceServicer_to_server(
                AccountsServicer(self.accounting, reveal_model_names=settings.reveal_model_names),
                self._grpc.server,
            )
        self.port = self._grpc.port
        self._registry_watch: asyncio.Task | None = None
        self.metrics: MetricsServer | None = None

    async def start(self) -> None:
        if self.accounting is None:
            logger.warning(
                "accounting is disabled: every caller is served without an API key, and nothing is "
                "billed, rate-limited, cached or logged"
            )
        else:
            await self.accounting.start()
        await self.pool.start()
        if self.settings.registry_poll_interval > 0:
            self._registry_watch = asyncio.create_task(self._watch_registry(), name="registry-watch")
        await self._grpc.start()
        if self.settings.metrics_port is not None:
            self.metrics = MetricsServer(self.settings.host, self.settings.metrics_port)

    async def stop(self, grace: float | None = None) -> None:
        """Drains the server, then settles what is left, writes the request log and closes the
        database."""
        await self._grpc.stop(self.settings.drain_grace_seconds if grace is None else grace)
        if self._registry_watch is not None:
            self._registry_watch.cancel()
            await asyncio.gather(self._registry_watch, return_exceptions=True)
        await self.pool.close()
        if self.accounting is not None:
            await self.accounting.close()
        if self.metrics is not None:
            self.metrics.close()

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
