"""What every Switchyard gRPC server shares: error mapping, one log line per RPC, health,
reflection and the shutdown order (health NOT_SERVING -> stop with grace -> close the backend)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.errors import RemoteError, ServiceError

logger = logging.getLogger(__name__)

# Messages up to 64 MiB: long prompts and prompt-logprob echoes are larger than gRPC's 4 MiB default.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


async def _abort_for(context: grpc.aio.ServicerContext, method: str, error: Exception) -> None:
    if isinstance(error, ServiceError | RemoteError):
        await context.abort_with_status(error.to_status())
    logger.exception("unhandled error in %s", method, exc_info=error)
    # The exception text may hold prompts or internals: the caller gets a generic message.
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


class ServiceErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps typed errors to statuses and logs one line per RPC (method, code, duration)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith("/grpc."):
            return handler
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


@contextlib.asynccontextmanager
async def _served(context: grpc.aio.ServicerContext, method: str) -> AsyncIterator[None]:
    """One RPC's scope: typed errors become statuses, and a log line says how it ended."""
    started, code = time.perf_counter(), "OK"
    try:
        yield
    except asyncio.CancelledError:
        code = "CANCELLED"
        raise
    except grpc.aio.AbortError:
        code = "ABORTED"
        raise
    except Exception as error:
        code = getattr(getattr(error, "code", None), "name", None) or "ERROR"
        await _abort_for(context, method, error)
    finally:
        # Services log each generation themselves (with its tokens); a routine OK here, such as a
        # router's load poll every second, would only repeat or drown that.
        level = logging.DEBUG if code == "OK" else logging.INFO
        logger.log(level, "rpc %s %s %.1fms", method, code, (time.perf_counter() - started) * 1000)


def _wrap_unary(behavior, method: str):
    async def wrapper(request, context: grpc.aio.ServicerContext):
        async with _served(context, method):
            return await behavior(request, context)

    return wrapper


def _wrap_stream(behavior, method: str):
    async def wrapper(request, context: grpc.aio.ServicerContext) -> AsyncIterator:
        async with _served(context, method):
            async for response in behavior(request, context):
                yield response

    return wrapper


class GrpcServer:
    """An aio server with health and reflection, started on `address`; `port` is the bound port
    (pass port 0 to let the OS choose, as the tests do)."""

    def __init__(self, service_names: Iterable[str], address: str) -> None:
        self.server = grpc.aio.server(interceptors=[ServiceErrorInterceptor()], options=CHANNEL_OPTIONS)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = list(service_names)
        reflection.enable_server_reflection([*self.service_names, reflection.SERVICE_NAME], self.server)
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC server to {address}")

    async def start(self) -> None:
        await self.server.start()
        await self.set_serving(True)

    async def set_serving(self, serving: bool) -> None:
        statuses = health_pb2.HealthCheckResponse
        status = statuses.SERVING if serving else statuses.NOT_SERVING
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        await self.set_serving(False)
        await self.server.stop(grace)


def install_shutdown_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop`; the service's main coroutine then drains and exits."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
