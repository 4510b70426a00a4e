"""The one seam between the engine's gRPC service and whatever generates tokens.

Backends speak the contract's own messages, so a token crosses the servicer without being copied
into another model: `generate` yields ready `GenerateResponse` events (deltas, then one finished).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from switchyard.engine.v1 import engine_service_pb2 as engine_pb2


@runtime_checkable
class GenerationBackend(Protocol):
    """One served model on one host.

    Contract for `generate`:
    - yields `GenerateResponse(delta=...)` events, one finish_reason per choice, then exactly one
      `GenerateResponse(finished=...)` with the usage;
    - raises a `services.common.errors.ServiceError` for what the caller did wrong
      (InvalidRequestError, ContextLengthExceededError, ModelNotFoundError) or for a dead backend
      (EngineUnavailableError);
    - when the consumer stops iterating (the gRPC call was cancelled: `CancelledError` or
      `GeneratorExit` at the current `await`), the request is aborted in the backend before the
      generator finishes closing: no work continues for a caller that has gone.
    """

    async def start(self) -> None:
        """Loads the model; the engine reports SERVING only after this returns."""

    async def close(self) -> None:
        """Stops the backend after the server has drained."""

    def generate(self, request: engine_pb2.GenerateRequest) -> AsyncIterator[engine_pb2.GenerateResponse]:
        """Streams one request's output (see the class docstring)."""

    async def model_info(self) -> engine_pb2.GetModelInfoResponse:
        """Served name, context window, adapters and capabilities."""

    async def load(self) -> engine_pb2.GetLoadResponse:
        """The backend's load right now."""

    async def is_healthy(self) -> bool:
        """False once the backend can no longer serve (the engine then reports NOT_SERVING)."""
