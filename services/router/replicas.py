"""Engine replicas: one channel per address (made once), their health, load and failures, and the
policy that picks one for a request.

- Health: a grpc.health.v1 Watch stream per replica; a replica whose watch fails (engine down) is
  unhealthy until a new watch (every health_retry_interval) reports SERVING.
- Load: the router's own outstanding calls per replica, plus each engine's GetLoad report, polled.
- Failures: `failures_before_cooldown` consecutive failed calls cool a replica down for
  `cooldown_seconds`, doubling while it keeps failing (up to `max_cooldown_seconds`). When the time
  is up, the next request probes it: success makes it healthy again, one more failure cools it
  down again for longer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.grpc_server import CHANNEL_OPTIONS
from services.router.affinity import BoundedTable, PrefixAffinity, prefix_block_hashes
from services.router.features import RequestFeatures
from services.router.registry import ResolvedModel
from services.router.settings import ReplicaSettings
from switchyard.engine.v1 import engine_service_pb2 as engine_pb2
from switchyard.engine.v1 import engine_service_pb2_grpc as engine_grpc

logger = logging.getLogger(__name__)

ENGINE_GENERATE_METHOD = "/switchyard.engine.v1.EngineService/Generate"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_ENGINE_CHANNEL_OPTIONS = [
    *CHANNEL_OPTIONS,
    # gRPC's default reconnect backoff grows to two minutes; a restarted engine should be back in
    # seconds, and these are a handful of long-lived connections.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class Replica:
    """One engine address: its channel and what the router knows about it."""

    def __init__(self, address: str, settings: ReplicaSettings) -> None:
        self.address = address
        self._settings = settings
        self.channel = grpc.aio.insecure_channel(address, options=_ENGINE_CHANNEL_OPTIONS)
        # Generate without a response deserializer: the router forwards the engine's serialized
        # events without parsing them (services/router/dispatch.py).
        self.generate_raw = self.channel.unary_stream(
            ENGINE_GENERATE_METHOD,
            request_serializer=engine_pb2.GenerateRequest.SerializeToString,
            response_deserializer=None,
        )
        self.engine = engine_grpc.EngineServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        # None until the first health report: assumed usable, so a new router serves at once.
        self.serving: bool | None = None
        self.load: engine_pb2.GetLoadResponse | None = None
        self.outstanding = 0
        self.consecutive_failures = 0
        self.cooldown_until = 0.0
        self._next_cooldown = settings.cooldown_seconds

    def __repr__(self) -> str:
        return f"Replica({self.address!r}, serving={self.serving}, outstanding={self.outstanding})"

    def available(self, now: float) -> bool:
        return self.serving is not False and now >= self.cooldown_until

    def load_score(self) -> float:
        """Requests running or queued on the engine. The router's own count is current; the engine's
        report (up to one poll old) also sees other routers' requests; max() avoids counting ours twice."""
        load = self.load
        if load is None:
            return float(self.outstanding)
        return float(max(self.outstanding, load.running_requests) + load.waiting_requests)

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self._next_cooldown = self._settings.cooldown_seconds

    def record_failure(self, now: float) -> None:
        self.consecutive_failures += 1
        if self.consecutive_failures >= self._settings.failures_before_cooldown:
            self.cooldown_until = now + self._next_cooldown
            logger.warning(
                "replica %s cooled down for %.1fs after %d consecutive failures",
                self.address,
                self._next_cooldown,
                self.consecutive_failures,
            )
            self._next_cooldown = min(
                self._settings.max_cooldown_seconds, max(self._next_cooldown * 2, 0.001)
            )


class ReplicaPool:
    """The replicas of every model in the registry, with their health watches and a load poller."""

    def __init__(self, settings: ReplicaSettings) -> None:
        self._settings = settings
        self._replicas: dict[str, Replica] = {}
        self._watches: dict[str, asyncio.Task] = {}
        self._background: set[asyncio.Task] = set()
        self._poller: asyncio.Task | None = None
        self._started = False

    def get(self, address: str) -> Replica | None:
        return self._replicas.get(address)

    def sync(self, addresses: Iterable[str]) -> list[str]:
        """Opens channels to new addresses and retires the ones no longer listed; returns the retired."""
        wanted = set(addresses)
        for address in wanted - self._replicas.keys():
            self._replicas[address] = Replica(address, self._settings)
            if self._started:
                self._watch(self._replicas[address])
        retired = sorted(self._replicas.keys() - wanted)
        for address in retired:
            replica = self._replicas.pop(address)
            watch = self._watches.pop(address, None)
            if watch is not None:
                watch.cancel()
            # Calls in flight on a retired replica get the drain grace to finish.
            self._spawn(replica.channel.close(grace=self._settings.retired_channel_grace))
        return retired

    async def start(self) -> None:
        self._started = True
        for replica in self._replicas.values():
            self._watch(replica)
        self._poller = asyncio.create_task(self._poll_loads(), name="replica-load-poller")

    async def close(self) -> None:
        tasks = [*self._watches.values(), *([self._poller] if self._poller else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._background, return_exceptions=True)
        await asyncio.gather(*(replica.channel.close() for replica in self._replicas.values()))
        self._watches.clear()
        self._started = False

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _watch(self, replica: Replica) -> None:
        self._watches[replica.address] = asyncio.create_task(
            self._watch_health(replica), name=f"health-watch {replica.address}"
        )

    async def _watch_health(self, replica: Replica) -> None:
        request = health_pb2.HealthCheckRequest(service="")
        while True:
            try:
                async for response in replica.health.Watch(request):
                    serving = response.status == _SERVING
                    if serving != replica.serving:
                        logger.info(
                            "replica %s is %s", replica.address, "serving" if serving else "not serving"
                        )
                    replica.serving = serving
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    logger.warning(
                        "replica %s has no health service; judged by its calls only", replica.address
                    )
                    replica.serving = None
                    return
            if replica.serving is not False:
                logger.warning(
                    "replica %s lost its health watch: not serving until it answers", replica.address
                )
            replica.serving = False
            await asyncio.sleep(self._settings.health_retry_interval)

    async def _poll_loads(self) -> None:
        interval = self._settings.load_poll_interval
        request = engine_pb2.GetLoadRequest()

        async def poll(replica: Replica) -> None:
            try:
                replica.load = await replica.engine.GetLoad(request, timeout=interval)
            except grpc.aio.AioRpcError:
                replica.load = None

        while True:
            await asyncio.gather(*(poll(replica) for replica in list(self._replicas.values())))
            await asyncio.sleep(interval)


class ReplicaChooser:
    """Picks a replica of a model for a request by the configured policy (see ReplicaSettings)."""

    def __init__(
        self, pool: ReplicaPool, settings: ReplicaSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._clock = clock
        self._turns = itertools.count()
        self.prefixes = PrefixAffinity(settings.affinity_table_size)
        self.sessions: BoundedTable[tuple[str, str], str] = BoundedTable(settings.session_table_size)

    def forget(self, addresses: Iterable[str]) -> None:
        for address in addresses:
            self.prefixes.forget(address)
            self.sessions.discard_value(address)

    def choose(
        self,
        model: ResolvedModel,
        features: RequestFeatures,
        *,
        customer: str = "",
        exclude: frozenset[str] | set[str] = frozenset(),
        record: bool = True,
    ) -> Replica | None:
        """A usable replica of `model` not in `exclude`, or None. `record=False` decides without
        updating the affinity tables (Route, which generates nothing)."""
        now = self._clock()
        usable = []
        for address in model.entry.replicas:
            replica = self._pool.get(address)
            if replica is not None and address not in exclude and replica.available(now):
                usable.append(replica)
        if not usable:
            return None
        turn = next(self._turns)
        policy = self._settings.policy
        if policy == "round_robin":
            return usable[turn % len(usable)]
        # Ties are broken by rotation, so equally loaded replicas share the traffic.
        rotation = turn % len(usable)
        least = min(usable[rotation:] + usable[:rotation], key=lambda replica: replica.load_score())
        if policy == "least_loaded":
            return least

        hashes = prefix_block_hashes(
            model.engine_model,
            features.affinity_source,
            self._settings.prefix_block_chars,
            self._settings.prefix_max_blocks,
        )
        by_address = {replica.address: replica for replica in usable}
        preferred_address, _ = self.prefixes.longest_match(hashes, by_address.keys())
        session_key = (model.entry.id, customer)
        if preferred_address is None and customer:
            preferred_address = self.sessions.get(session_key)
        preferred = by_address.get(preferred_address) if preferred_address else None
        chosen = least
        if (
            preferred is not None
            and preferred.load_score() <= least.load_score() + self._settings.affinity_load_slack
        ):
            chosen = preferred
        if record:
            self.prefixes.record(hashes, chosen.address)
            if customer:
                self.sessions.put(session_key, chosen.address)
        return chosen
