"""RouterService: Route (the decision only), Generate (routed generation), ListModels, GetModel."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Protocol

import grpc

from services.router.breakdown import build_breakdown, candidate_scores
from services.router.decision import Decision, decide
from services.router.dispatch import Dispatcher, Job, Outcome, display_name, serialize_generate_response
from services.router.redaction import REDACTED, RevealPolicy
from services.router.registry import ModelEntry, Registry
from services.router.replicas import ReplicaChooser
from services.router.scoring import HeuristicScorer, Scorer
from services.router.settings import RouterSettings
from switchyard.router.v1 import router_service_pb2 as router_pb2

logger = logging.getLogger(__name__)

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name


class RegistrySource(Protocol):
    """Where the registry in force comes from (services.router.registry.RegistryFile)."""

    current: Registry


def _header(context: grpc.aio.ServicerContext, name: str) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == name and isinstance(value, str):
            return value
    return ""


def model_message(registry: Registry, entry: ModelEntry) -> router_pb2.Model:
    capabilities = entry.capabilities
    return router_pb2.Model(
        id=entry.id,
        provider=entry.provider,
        aliases=registry.aliases(entry),
        context_window=entry.context_window,
        quality=entry.quality,
        input_price=entry.input_price,
        output_price=entry.output_price,
        supports_tools=capabilities.tools,
        supports_json_schema=capabilities.json_schema,
        supports_vision=capabilities.vision,
        max_logprobs=capabilities.max_logprobs,
        lora_adapters=capabilities.lora_adapters,
        created=registry.created.get(entry.id, 0),
    )


class RouterServicer:
    def __init__(
        self,
        settings: RouterSettings,
        registry: RegistrySource,
        chooser: ReplicaChooser,
        dispatcher: Dispatcher,
        scorer: Scorer | None = None,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._chooser = chooser
        self._dispatcher = dispatcher
        self._scorer = scorer or HeuristicScorer()
        self._reveal = RevealPolicy(settings.reveal_model_names, settings.reveal_key_hashes)

    def _decide(self, request: router_pb2.GenerateRequest) -> Decision:
        return decide(self._registry.current, request, self._scorer, self._settings.selection)

    async def Route(
        self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.RouteResponse:
        started = time.perf_counter()
        inner = request.request
        decision = self._decide(inner)
        reveal = self._reveal.reveals(context.invocation_metadata())
        response = router_pb2.RouteResponse(
            category=decision.score.category,
            difficulty=decision.score.difficulty,
            candidates=candidate_scores(decision.selection, reveal),
        )
        # The first model of the plan that has a usable replica is the one Generate would start on.
        for model in decision.selection.plan:
            replica = self._chooser.choose(
                model, decision.features, customer=inner.customer_identifier, record=False
            )
            if replica is not None:
                response.model = display_name(model) if reveal else REDACTED
                response.replica = replica.address if reveal else ""
                break
        response.routing_time = time.perf_counter() - started
        return response

    async def Generate(
        self, request: router_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes | router_pb2.GenerateResponse]:
        received_at, timestamp = time.perf_counter(), time.time()
        request_id = request.request_id or _header(context, "x-request-id") or uuid.uuid4().hex
        reveal = self._reveal.reveals(context.invocation_metadata())
        decision = self._decide(request)
        routing_time = time.perf_counter() - received_at
        job = Job(
            request_id=request_id,
            generation=request.input,
            features=decision.features,
            plan=decision.selection.plan,
            customer=request.customer_identifier,
            reveal=reveal,
            time_remaining=context.time_remaining,
        )
        outcome = Outcome()
        async for event in self._dispatcher.stream(job, outcome):
            yield event

        finished = router_pb2.GenerateFinished(usage=outcome.usage)
        finished_at = time.perf_counter()
        if request.request_breakdown:
            finished.breakdown.CopyFrom(
                build_breakdown(
                    request,
                    decision,
                    outcome,
                    reveal=reveal,
                    received_at=received_at,
                    finished_at=finished_at,
                    timestamp=timestamp,
                    routing_time=routing_time,
                )
            )
        logger.info(
            "request %s: %s on %s, %s difficulty %.2f, %d attempt(s), %d resumed, "
            "%d prompt + %d completion tokens, %.6g credits, first output %.1f ms, %.1f ms",
            request_id,
            outcome.model.entry.id if outcome.model else "-",
            outcome.replica or "-",
            decision.score.category,
            decision.score.difficulty,
            outcome.attempts,
            outcome.resumed,
            outcome.usage.prompt_tokens,
            outcome.usage.completion_tokens,
            outcome.cost,
            ((outcome.first_output_at or finished_at) - received_at) * 1000,
            (finished_at - received_at) * 1000,
        )
        yield router_pb2.GenerateResponse(finished=finished)

    async def ListModels(
        self, request: router_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListModelsResponse:
        registry = self._registry.current
        return router_pb2.ListModelsResponse(
            models=[model_message(registry, entry) for entry in registry.models]
        )

    async def GetModel(
        self, request: router_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.GetModelResponse:
        registry = self._registry.current
        return router_pb2.GetModelResponse(model=model_message(registry, registry.resolve(request.id).entry))


def add_to_server(servicer: RouterServicer, server: grpc.aio.Server) -> None:
    """Registers the service like the generated add_RouterServiceServicer_to_server, except that
    Generate's serializer passes already-serialized events through (see services/router/dispatch.py)."""
    handlers = {
        "Route": grpc.unary_unary_rpc_method_handler(
            servicer.Route,
            request_deserializer=router_pb2.RouteRequest.FromString,
            response_serializer=router_pb2.RouteResponse.SerializeToString,
        ),
        "Generate": grpc.unary_stream_rpc_method_handler(
            servicer.Generate,
            request_deserializer=router_pb2.GenerateRequest.FromString,
            response_serializer=serialize_generate_response,
        ),
        "ListModels": grpc.unary_unary_rpc_method_handler(
            servicer.ListModels,
            request_deserializer=router_pb2.ListModelsRequest.FromString,
            response_serializer=router_pb2.ListModelsResponse.SerializeToString,
        ),
        "GetModel": grpc.unary_unary_rpc_method_handler(
            servicer.GetModel,
            request_deserializer=router_pb2.GetModelRequest.FromString,
            response_serializer=router_pb2.GetModelResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
