"""The edge's one gRPC channel to the router, made in the app's lifespan and shared by all requests:
RouterService (generation, models) and AccountsService (usage, the request log) on it."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.grpc_server import CHANNEL_OPTIONS
from services.edge.errors import from_rpc_error
from switchyard.router.v1 import accounts_service_pb2 as accounts_pb2
from switchyard.router.v1 import accounts_service_pb2_grpc as accounts_grpc
from switchyard.router.v1 import router_service_pb2 as router_pb2
from switchyard.router.v1 import router_service_pb2_grpc as router_grpc

Metadata = tuple[tuple[str, str], ...]

ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name

# Several routers behind one DNS name (dns:///router:50051 on a headless Service) share the edge's
# calls; gRPC's default, pick_first, would pin every edge to one router for the channel's lifetime.
ROUTER_CHANNEL_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.lb_policy_name", "round_robin")]


class RouterClient:
    """The router's calls with the edge's error mapping: failures surface as `ApiError`s."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.aio.insecure_channel(address, options=ROUTER_CHANNEL_OPTIONS)
        self._stub = router_grpc.RouterServiceStub(self._channel)
        self._accounts = accounts_grpc.AccountsServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def generate(
        self, request: router_pb2.GenerateRequest, *, metadata: Metadata, grpc_timeout: float
    ) -> grpc.aio.UnaryStreamCall:
        """Starts a routed generation; its events and errors come from the call (see generation.py)."""
        return self._stub.Generate(request, metadata=metadata, timeout=grpc_timeout)

    async def list_models(self, *, metadata: Metadata, grpc_timeout: float) -> list[router_pb2.Model]:
        try:
            response = await self._stub.ListModels(
                router_pb2.ListModelsRequest(), metadata=metadata, timeout=grpc_timeout
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return list(response.models)

    async def get_model(self, model_id: str, *, metadata: Metadata, grpc_timeout: float) -> router_pb2.Model:
        try:
            response = await self._stub.GetModel(
                router_pb2.GetModelRequest(id=model_id), metadata=metadata, timeout=grpc_timeout
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return response.model

    async def authenticate(self, *, metadata: Metadata, grpc_timeout: float) -> None:
        """Returns when the router accepts the key in `metadata`; raises the ApiError it answers."""
        await _unary(self._stub.Authenticate, router_pb2.AuthenticateRequest(), metadata, grpc_timeout)

    async def get_usage(
        self, request: accounts_pb2.GetUsageRequest, *, metadata: Metadata, grpc_timeout: float
    ) -> accounts_pb2.GetUsageResponse:
        return await _unary(self._accounts.GetUsage, request, metadata, grpc_timeout)

    async def list_requests(
        self, request: accounts_pb2.ListRequestsRequest, *, metadata: Metadata, grpc_timeout: float
    ) -> accounts_pb2.ListRequestsResponse:
        return await _unary(self._accounts.ListRequests, request, metadata, grpc_timeout)

    async def get_request(
        self, request: accounts_pb2.GetRequestRequest, *, metadata: Metadata, grpc_timeout: float
    ) -> accounts_pb2.GetRequestResponse:
        return await _unary(self._accounts.GetRequest, request, metadata, grpc_timeout)

    async def is_serving(self, *, grpc_timeout: float) -> bool:
        """Whether the router's grpc.health.v1 reports RouterService as SERVING."""
        try:
            response = await self._health.Check(
                health_pb2.HealthCheckRequest(service=ROUTER_SERVICE), timeout=grpc_timeout
            )
        except grpc.RpcError:
            return False
        return response.status == health_pb2.HealthCheckResponse.SERVING

    async def close(self) -> None:
        await self._channel.close()


async def _unary(method, request, metadata: Metadata, grpc_timeout: float):
    try:
        return await method(request, metadata=metadata, timeout=grpc_timeout)
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None
