"""RouterService: Route (the decision only), Generate (routed generation), ListModels, GetModel,
Authenticate (the key check alone)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Protocol

import grpc

from services.common.errors import ModelNotFoundError
from services.router.accounting import Principal
from services.router.batch import BatchRun, batch_jobs
from services.router.breakdown import build_breakdown, candidate_scores
from services.router.decision import Decision, decide
from services.router.dispatch import (
    Dispatcher,
    Job,
    Outcome,
    bill_what_was_sent,
    display_name,
    serialize_generate_response,
)
from services.router.metering import Metering, replay
from services.router.redaction import REDACTED
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
        metering: Metering,
        scorer: Scorer | None = None,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._chooser = chooser
        self._dispatcher = dispatcher
        self._metering = metering
        self._scorer = scorer or HeuristicScorer()

    def _decide(self, request: router_pb2.GenerateRequest, principal: Principal) -> Decision:
        return decide(
            self._registry.current, request, self._scorer, self._settings.selection, principal.may_use
        )

    async def Route(
        self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.RouteResponse:
        started = time.perf_counter()
        principal = await self._metering.authenticate(context.invocation_metadata())
        reveal = self._metering.reveals(principal)
        inner = request.request
        decision = self._decide(inner, principal)
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
        metered = await self._metering.begin(request, context)
        received_at = metered.received_at
        outcome = Outcome()
        job: Job | None = None
        batch: BatchRun | None = None
        try:
            decision = self._decide(request, metered.principal)
            routing_time = time.perf_counter() - received_at
            plan, cached = await metered.admit(decision, routing_time)
            if metered.rate_limit_headers:
                await context.send_initial_metadata(metered.rate_limit_headers)
            if cached is not None:
                events = replay(cached, plan[0], metered.reveal, outcome)
            else:
                job = Job(
                    request_id=metered.request_id,
                    generation=request.input,
                    features=decision.features,
                    plan=plan,
                    customer=request.customer_identifier,
                    reveal=metered.reveal,
                    time_remaining=context.time_remaining,
                    named_model=decision.selection.named,
                )
                if request.batch:
                    batch = BatchRun(self._dispatcher, batch_jobs(job, request.batch, decision.prompts))
                    events = batch.stream(outcome)
                else:
                    events = self._dispatcher.stream(job, outcome)
            async for event in events:
                yield event
        except BaseException as error:
            try:
                if batch is not None:
                    await batch.close(outcome)
                elif job is not None:
                    bill_what_was_sent(job, outcome)
            finally:
                # Whatever closing the batch did, the hold is settled and the request logged.
                metered.finish(outcome, error)
            raise
        if batch is not None:
            try:
                await batch.close(outcome)
            except BaseException as error:
                metered.finish(outcome, error)
                raise
        cost = metered.finish(outcome)

        finished = router_pb2.GenerateFinished(usage=outcome.usage)
        finished_at = time.perf_counter()
        if request.request_breakdown:
            finished.breakdown.CopyFrom(
                build_breakdown(
                    request,
                    decision,
                    outcome,
                    reveal=metered.reveal,
                    cost=cost,
                    cached=cached is not None,
                    received_at=received_at,
                    finished_at=finished_at,
                    timestamp=metered.timestamp,
                    routing_time=routing_time,
                )
            )
        logger.info(
            "request %s: %s on %s, %s difficulty %.2f, %d attempt(s), %d resumed, %s"
            "%d prompt + %d completion tokens, %.6g credits, first output %.1f ms, %.1f ms",
            metered.request_id,
            outcome.model.entry.id if outcome.model else "-",
            outcome.replica or "-",
            decision.score.category,
            decision.score.difficulty,
            outcome.attempts,
            outcome.resumed,
            "from the response cache, " if cached is not None else "",
            outcome.usage.prompt_tokens,
            outcome.usage.completion_tokens,
            cost,
            ((outcome.first_output_at or finished_at) - received_at) * 1000,
            (finished_at - received_at) * 1000,
        )
        yield router_pb2.GenerateResponse(finished=finished)

    async def ListModels(
        self, request: router_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListModelsResponse:
        """The models the caller's key may use."""
        principal = await self._metering.authenticate(context.invocation_metadata())
        registry = self._registry.current
        return router_pb2.ListModelsResponse(
            models=[
                model_message(registry, entry) for entry in registry.models if principal.may_use(entry.id)
            ]
        )

    async def GetModel(
        self, request: router_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.GetModelResponse:
        principal = await self._metering.authenticate(context.invocation_metadata())
        registry = self._registry.current
        entry = registry.resolve(request.id).entry
        if not principal.may_use(entry.id):
            # As for a model that does not exist: listing hides it, so this must not confirm it.
            raise ModelNotFoundError(request.id)
        return router_pb2.GetModelResponse(model=model_message(registry, entry))

    async def Authenticate(
        self, request: router_pb2.AuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.AuthenticateResponse:
        await self._metering.authenticate(context.invocation_metadata())
        return router_pb2.AuthenticateResponse()


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
        "Authenticate": grpc.unary_unary_rpc_method_handler(
            servicer.Authenticate,
            request_deserializer=router_pb2.AuthenticateRequest.FromString,
            response_serializer=router_pb2.AuthenticateResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
