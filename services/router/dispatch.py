"""Runs one routed request on the engines: replica choice, retries, fallbacks and mid-stream resume.

Order of attempts: the replicas of the first model in the plan (best first by the replica policy),
then the next model of the plan (fallback_models, then the other candidates; see selection.py), each
engine call counting as one attempt, up to `max_attempts`, with exponential backoff between them and
never past the request's deadline. Errors the caller caused (INVALID_ARGUMENT, PERMISSION_DENIED, ...)
are not retried: they reach the caller with their reason. CONTEXT_LENGTH_EXCEEDED moves on to the
next model of the plan (the router's token estimate is rough; a larger model may fit) and reaches
the caller when none is left. An engine that fails after the client got tokens is resumed elsewhere
(services/router/resume.py).

Hot path: the engine's events arrive serialized (the replica's Generate has no deserializer). A
delta event is forwarded by rewriting its one-byte field tag: the engine's and the router's
GenerateResponse both wrap the same TokenDelta as a length-delimited field, so the payload bytes
are reused as they are. Nothing is parsed, copied into a new message or logged per token.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc

from services.common.errors import (
    DeadlineExceededError,
    EngineUnavailableError,
    NoHealthyReplicaError,
    RemoteError,
)
from services.router.features import RequestFeatures
from services.router.redaction import REDACTED
from services.router.registry import ModelEntry, ResolvedModel
from services.router.replicas import Replica, ReplicaChooser
from services.router.resume import Transcript, continuation_input, resume_blocker
from services.router.settings import RetrySettings
from switchyard.engine.v1 import engine_service_pb2 as engine_pb2
from switchyard.inference.v1 import inference_pb2
from switchyard.router.v1 import router_service_pb2 as router_pb2

logger = logging.getLogger(__name__)


def _field_tag(message: type, name: str) -> int:
    descriptor = message.DESCRIPTOR.fields_by_name[name]
    tag = (descriptor.number << 3) | 2  # wire type 2: length-delimited
    if tag >= 0x80:
        raise ImportError(f"{message.__name__}.{name}: the delta splice assumes one-byte field tags")
    return tag


if (
    engine_pb2.GenerateResponse.DESCRIPTOR.fields_by_name["delta"].message_type
    is not router_pb2.GenerateResponse.DESCRIPTOR.fields_by_name["delta"].message_type
):
    raise ImportError("the delta splice needs the engine and the router to stream the same TokenDelta")
ENGINE_DELTA_TAG = _field_tag(engine_pb2.GenerateResponse, "delta")
ENGINE_FINISHED_TAG = _field_tag(engine_pb2.GenerateResponse, "finished")
ROUTER_DELTA_PREFIX = bytes([_field_tag(router_pb2.GenerateResponse, "delta")])

# Failures of the replica (or of its connection), worth trying elsewhere. NOT_FOUND from an engine
# means it does not serve what the registry says it does: a deployment error, not the caller's.
_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.NOT_FOUND,
    }
)
_CONTEXT_LENGTH_EXCEEDED = "CONTEXT_LENGTH_EXCEEDED"


def serialize_generate_response(event: bytes | router_pb2.GenerateResponse) -> bytes:
    """The router's Generate serializer: forwarded deltas are already bytes."""
    return event if type(event) is bytes else event.SerializeToString()


def _whole_field(raw: bytes) -> bool:
    """True when `raw` is exactly one length-delimited field: tag byte, varint length, payload.
    A newer engine adding fields to its GenerateResponse fails this and takes the parsing path."""
    size = len(raw)
    if size < 130:  # one-byte length: the common case
        return size >= 2 and raw[1] == size - 2
    length, shift, position = 0, 0, 1
    while position < size and shift < 35:
        byte = raw[position]
        position += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            return position + length == size
        shift += 7
    return False


@dataclass(slots=True)
class Job:
    """One routed request, as the dispatcher needs it."""

    request_id: str
    generation: inference_pb2.GenerationInput
    features: RequestFeatures
    plan: tuple[ResolvedModel, ...]
    customer: str
    reveal: bool
    # Seconds left before the caller's deadline, or None without one (the servicer context's).
    time_remaining: Callable[[], float | None]
    # What `routed` names the first model of the plan for a caller who may not see model names: the
    # name the caller gave it explicitly (see Selection.named), or "" for "redacted".
    named_model: str = ""


@dataclass(slots=True)
class Outcome:
    """What happened, filled in while the request runs (for the breakdown, billing and the request
    log). `usage`, `charges` and `cost` are set when the stream ends; for one that is cancelled or
    fails part-way, `bill_what_was_sent` sets them."""

    attempts: int = 0
    # Model ids tried (or found without a usable replica) and given up on, in order.
    fallbacks_used: list[str] = field(default_factory=list)
    model: ResolvedModel | None = None  # the model that served the first output
    replica: str = ""
    first_output_at: float | None = None  # time.perf_counter()
    usage: inference_pb2.Usage = field(default_factory=inference_pb2.Usage)
    # The usage split by the model that produced it: (model, prompt tokens, completion tokens).
    charges: list[tuple[ModelEntry, int, int]] = field(default_factory=list)
    cost: float = 0.0
    resumed: int = 0
    # The deltas sent to the caller.
    transcript: Transcript = field(default_factory=Transcript)


class Dispatcher:
    def __init__(self, chooser: ReplicaChooser, settings: RetrySettings) -> None:
        self._chooser = chooser
        self._settings = settings

    async def stream(self, job: Job, outcome: Outcome) -> AsyncIterator[bytes | router_pb2.GenerateResponse]:
        """Yields the `routed` event, then the deltas (serialized); fills `outcome` (usage, cost,
        attempts, ...) by the time it ends. Raises a ServiceError or RemoteError when nothing could
        serve the request."""
        transcript = outcome.transcript
        position = 0  # in job.plan
        failed: set[str] = set()  # replicas that failed this request: not asked again
        last_error: RemoteError | None = None
        whole: engine_pb2.GenerateFinished | None = None  # the finish of an uninterrupted request
        resumed_prompt_tokens: int | None = None
        served_by: Replica | None = None
        # What is left to generate: None is the whole request; a number is one choice being continued
        # after a mid-stream failure.
        pending: list[int | None] = [None]

        while pending:
            target = pending[0]
            model = job.plan[position]
            replica = self._chooser.choose(model, job.features, customer=job.customer, exclude=failed)
            if replica is None:
                outcome.fallbacks_used.append(model.entry.id)
                position += 1
                if position == len(job.plan):
                    raise self._exhausted(outcome, last_error, reveal=job.reveal)
                continue
            generation, carried = job.generation, 0
            if target is not None:
                choice = transcript.choices()[target]
                generation, carried = continuation_input(job.generation, choice), choice.tokens
                if generation is None:  # the choice had used its whole budget when the engine failed
                    yield self._closing_delta(target, transcript)
                    pending.pop(0)
                    continue
            await self._wait_for_attempt(job, outcome)
            outcome.attempts += 1
            request_id = job.request_id if outcome.attempts == 1 else f"{job.request_id}.{outcome.attempts}"
            request = engine_pb2.GenerateRequest(
                request_id=request_id, model=model.engine_model, input=generation
            )
            remap = target is not None and target != 0
            sent_before = len(transcript)
            finished: engine_pb2.GenerateFinished | None = None
            transcript.begin(model.entry)
            call = replica.generate_raw(
                request, timeout=job.time_remaining(), metadata=(("x-request-id", request_id),)
            )
            replica.outstanding += 1
            try:
                # The per-token loop: keep it this small.
                async for raw in call:
                    tag = raw[0] if raw else -1  # b"": an event with nothing set (parsed, then skipped)
                    if tag == ENGINE_DELTA_TAG and not remap and _whole_field(raw):
                        event = ROUTER_DELTA_PREFIX + raw[1:]
                    elif tag == ENGINE_FINISHED_TAG:
                        # The last event by contract: the call's OK status adds nothing, so the
                        # routed stream goes on without waiting for it (the call ends by itself).
                        finished = engine_pb2.GenerateResponse.FromString(raw).finished
                        break
                    else:
                        event = self._parsed_delta(raw, target)
                        if event is None:
                            continue
                    if outcome.model is None:
                        yield self._routed(job, outcome, model, replica)
                    transcript.append(event)
                    yield event
                if finished is None:
                    raise RemoteError(
                        grpc.StatusCode.INTERNAL, "the engine's stream ended without a finished event"
                    )
            except (grpc.aio.AioRpcError, RemoteError) as error:
                failure = (
                    RemoteError.from_rpc_error(error) if isinstance(error, grpc.aio.AioRpcError) else error
                )
                last_error = failure
                sent = len(transcript) > sent_before
                if failure.reason == _CONTEXT_LENGTH_EXCEEDED and not sent:
                    if position + 1 == len(job.plan):
                        raise failure from None
                    failed.update(model.entry.replicas)  # the same prompt fits no replica of this model
                    continue
                if failure.code not in _RETRYABLE:
                    if failure.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise DeadlineExceededError(
                            "The request's deadline passed while it was generated."
                        ) from None
                    raise failure from None
                failed.add(replica.address)
                replica.record_failure(time.monotonic())
                logger.warning(
                    "request %s: attempt %d on %s (%s) failed%s: %s",
                    job.request_id,
                    outcome.attempts,
                    replica.address,
                    model.entry.id,
                    " mid-stream" if sent else "",
                    failure,
                )
                if sent:
                    outcome.resumed += 1
                    if target is None:
                        pending = self._unfinished_choices(job, transcript)
                if len(transcript):
                    self._check_resumable(job, transcript, pending)
                continue
            finally:
                replica.outstanding -= 1
                if finished is None:
                    call.cancel()
            replica.record_success()
            served_by = replica
            if target is None:
                whole = finished
            elif resumed_prompt_tokens is None:
                resumed_prompt_tokens = max(0, finished.usage.prompt_tokens - carried)
            pending.pop(0)

        if outcome.model is None:  # the engine finished without sending any delta (max_tokens 0)
            yield self._routed(job, outcome, job.plan[position], served_by)
        self._settle(job, outcome, transcript, whole, resumed_prompt_tokens)

    def _routed(
        self, job: Job, outcome: Outcome, model: ResolvedModel, replica: Replica | None
    ) -> router_pb2.GenerateResponse:
        outcome.model = model
        outcome.replica = replica.address if replica is not None else ""
        outcome.first_output_at = time.perf_counter()
        if job.reveal:
            routed = router_pb2.Routed(model=display_name(model), replica=outcome.replica)
        elif job.named_model and model is job.plan[0]:
            routed = router_pb2.Routed(model=job.named_model)
        else:
            routed = router_pb2.Routed(model=REDACTED)
        return router_pb2.GenerateResponse(routed=routed)

    @staticmethod
    def _parsed_delta(raw: bytes, target: int | None) -> bytes | None:
        """The slow path: an event that is not one plain delta field, or a continued choice whose
        index must be restored."""
        event = engine_pb2.GenerateResponse.FromString(raw)
        if not event.HasField("delta"):
            return None
        if target is not None:
            event.delta.index = target
        return router_pb2.GenerateResponse(delta=event.delta).SerializeToString()

    @staticmethod
    def _closing_delta(target: int, transcript: Transcript) -> bytes:
        event = router_pb2.GenerateResponse(
            delta=inference_pb2.TokenDelta(index=target, finish_reason=inference_pb2.FINISH_REASON_LENGTH)
        ).SerializeToString()
        transcript.append(event)
        return event

    @staticmethod
    def _unfinished_choices(job: Job, transcript: Transcript) -> list[int | None]:
        choices = transcript.choices()
        count = max(1, job.generation.sampling.n)
        return [index for index in range(count) if index not in choices or not choices[index].finished]

    def _check_resumable(self, job: Job, transcript: Transcript, pending: list[int | None]) -> None:
        if not self._settings.resume_mid_stream:
            raise EngineUnavailableError("The engine failed while streaming; resuming is disabled.")
        choices = transcript.choices()
        for index in pending:
            if index is None or index not in choices:
                continue
            blocker = resume_blocker(job.generation, choices[index])
            if blocker:
                raise EngineUnavailableError(
                    f"The engine failed while streaming; the request cannot be resumed elsewhere ({blocker})."
                )

    async def _wait_for_attempt(self, job: Job, outcome: Outcome) -> None:
        """Enforces the attempt limit, the backoff before a retry and the deadline."""
        settings = self._settings
        if outcome.attempts >= settings.max_attempts:
            raise NoHealthyReplicaError(
                f"The request failed on {outcome.attempts} attempts (the limit); no replica could serve it.",
                metadata={"attempts": str(outcome.attempts)},
            )
        if outcome.attempts:
            backoff = settings.backoff_initial * settings.backoff_multiplier ** (outcome.attempts - 1)
            delay = min(settings.backoff_max, backoff) * random.uniform(0.5, 1.0)
            remaining = job.time_remaining()
            if remaining is not None and delay >= remaining:
                raise DeadlineExceededError(
                    f"The request's deadline leaves no time for another attempt after {outcome.attempts}."
                )
            if delay > 0:
                await asyncio.sleep(delay)
        remaining = job.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceededError("The request's deadline passed before an engine could serve it.")

    @staticmethod
    def _exhausted(
        outcome: Outcome, last_error: RemoteError | None, *, reveal: bool
    ) -> NoHealthyReplicaError:
        # Which models were tried is the routing decision redaction hides; without it, only a count.
        tried = ", ".join(outcome.fallbacks_used) if reveal else f"{len(outcome.fallbacks_used)} model(s)"
        detail = f"; last error: {last_error.code.name}" if last_error is not None else ""
        return NoHealthyReplicaError(
            f"No healthy replica could serve the request (models tried: {tried}){detail}.",
            metadata={"attempts": str(outcome.attempts)},
        )

    @staticmethod
    def _settle(
        job: Job,
        outcome: Outcome,
        transcript: Transcript,
        whole: engine_pb2.GenerateFinished | None,
        resumed_prompt_tokens: int | None,
    ) -> None:
        """Usage and cost. Uninterrupted: the engine's own usage, priced at the serving model. Resumed:
        completion tokens as sent to the client, each priced at the model that produced it; prompt
        tokens of the original request (a continuation's prompt minus the tokens it carried over, or the
        router's estimate when none finished); re-reading the partial text is the gateway's cost."""
        served = outcome.model.entry if outcome.model is not None else job.plan[0].entry
        if whole is not None and not outcome.resumed:
            outcome.usage.CopyFrom(whole.usage)
            outcome.charges = [(served, whole.usage.prompt_tokens, whole.usage.completion_tokens)]
        else:
            per_model = transcript.tokens_by_model()
            prompt_tokens = (
                job.features.prompt_tokens if resumed_prompt_tokens is None else resumed_prompt_tokens
            )
            outcome.usage.prompt_tokens = prompt_tokens
            outcome.usage.completion_tokens = sum(tokens for _, tokens in per_model)
            outcome.charges = [(served, prompt_tokens, 0)]
            outcome.charges += [(model, 0, tokens) for model, tokens in per_model]
        outcome.cost = sum(model.price(prompt, completion) for model, prompt, completion in outcome.charges)


def bill_what_was_sent(job: Job, outcome: Outcome) -> None:
    """Usage of a stream that ended early (cancelled, past its deadline, failed after output): the
    completion tokens the caller was sent, each at the model that produced it, and the prompt as the
    router estimated it (the engine's exact count comes only with its finish). Nothing when nothing
    was sent: a request is never billed for output its caller did not get."""
    if len(outcome.transcript):
        Dispatcher._settle(job, outcome, outcome.transcript, None, None)


def display_name(model: ResolvedModel) -> str:
    """What a caller allowed to see names is told: the model id, or the LoRA adapter it asked for."""
    return model.engine_model if model.engine_model != model.entry.served_name else model.entry.id
