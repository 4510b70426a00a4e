"""`SimBackend`: the simulated engine behind EngineService.

A product feature, like llm-d's inference simulator: deterministic text from a fixed vocabulary with
every sampling field of the contract honoured, configurable latency, a prefix-cache model and load
reports. It exists for tests, for benchmarks of the gateway itself and for routing experiments.
Repetition, presence and frequency penalties are accepted and range-checked but not modelled. Echo
prepends the prompt as the model sees it: for a chat, the flattened conversation (chat_template.py).

A request's life: checked (`plan_generation`) -> waits for room under max_running_sequences -> prefill
(time to first token; uncached prompt tokens cost prefill time, one prefill at a time) -> one token
per choice per step (inter_token_latency per step) -> finished with usage. Cancelling the consumer
stops it at the next await, with nothing left running: the sim never detaches a task.
"""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from collections.abc import AsyncIterator

from services.common.errors import EngineUnavailableError
from services.engine.backends.sim.admission import AdmissionQueue
from services.engine.backends.sim.decoding import ChoiceDecoder, EchoPrefix, RequestSampler, prompt_logprobs
from services.engine.backends.sim.language_model import PseudoLanguageModel, context_of, language_model
from services.engine.backends.sim.plan import GenerationPlan, plan_generation
from services.engine.backends.sim.prefix_cache import HitRateWindow, PrefixCache
from services.engine.backends.sim_config import SimSettings
from switchyard.engine.v1 import engine_service_pb2 as engine_pb2
from switchyard.inference.v1 import inference_pb2

# With no inter-token latency, hand the event loop back every this many steps: often enough to stay
# responsive and cancellable, rarely enough to cost nothing per token.
_STEPS_PER_YIELD = 16


class _RunningRequest:
    """What the load report needs to know about a request while it runs."""

    __slots__ = ("decoders", "prompt_tokens")

    def __init__(self, prompt_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.decoders: list[ChoiceDecoder] = []

    def blocks(self, block_size: int) -> int:
        # The choices share the prompt's blocks; each has its own for its output.
        return math.ceil(self.prompt_tokens / block_size) + sum(
            math.ceil(decoder.generated / block_size) for decoder in self.decoders
        )


class SimBackend:
    """A GenerationBackend (services.engine.backends.base) that simulates an engine."""

    def __init__(
        self, settings: SimSettings | None = None, served_model_name: str = "switchyard/sim"
    ) -> None:
        self.settings = settings or SimSettings()
        self.served_model_name = served_model_name
        self._model: PseudoLanguageModel | None = None
        self._admission = AdmissionQueue(self.settings.max_running_sequences)
        self._cache = PrefixCache(self.settings.block_size, self.settings.cache_capacity_blocks)
        self._hit_rate = HitRateWindow()
        self._prefill_lock = asyncio.Lock()
        self._running: set[_RunningRequest] = set()
        self._crashed = False
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        # Building the table takes about 0.1 s once per process: off the event loop.
        self._model = await asyncio.to_thread(language_model, self.settings.model_seed)

    async def close(self) -> None:
        self._closed = True

    async def is_healthy(self) -> bool:
        return self._model is not None and not self._crashed and not self._closed

    def simulate_crash(self) -> None:
        """Behaves like an engine whose process died: running requests fail at their next step and
        new ones at once with ENGINE_UNAVAILABLE, and is_healthy() turns false for good. For testing
        what callers do when an engine dies."""
        self._crashed = True

    # -- generation ----------------------------------------------------------------------------

    async def generate(
        self, request: engine_pb2.GenerateRequest
    ) -> AsyncIterator[engine_pb2.GenerateResponse]:
        self._check_serving()
        plan = plan_generation(request, self.settings, self.served_model_name)
        sampling = plan.sampling
        prompt_ids = plan.prompt.token_ids
        completion_tokens = 0
        async with self._admission.admit(sampling.best_of):
            running = _RunningRequest(len(prompt_ids))
            self._running.add(running)
            try:
                cached_tokens = await self._prefill(prompt_ids)
                running.decoders = self._decoders(plan)
                if sampling.best_of > sampling.n:
                    async for event in self._best_of(running.decoders, sampling.n):
                        yield event
                else:
                    async for event in self._stream(running.decoders):
                        yield event
                completion_tokens = sum(decoder.generated for decoder in running.decoders)
            finally:
                self._running.discard(running)
                # What was computed stays cached, also for a request cut short.
                for decoder in running.decoders:
                    self._cache.insert(prompt_ids + tuple(decoder.token_ids))
        yield engine_pb2.GenerateResponse(
            finished=engine_pb2.GenerateFinished(
                usage=inference_pb2.Usage(
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=completion_tokens,
                    cached_tokens=cached_tokens,
                )
            )
        )

    async def _prefill(self, prompt_ids: tuple[int, ...]) -> int:
        """Waits out the time to first token; returns the prompt tokens found in the prefix cache."""
        cached = self._cache.match(prompt_ids)
        self._hit_rate.record(len(prompt_ids), cached)
        prefill_time = (len(prompt_ids) - cached) * self.settings.prefill_time_per_token
        if prefill_time:
            async with self._prefill_lock:
                await asyncio.sleep(prefill_time)
        if self.settings.time_to_first_token:
            await asyncio.sleep(self.settings.time_to_first_token)
        self._check_serving()
        self._cache.insert(prompt_ids)
        return cached

    def _decoders(self, plan: GenerationPlan) -> list[ChoiceDecoder]:
        sampling = plan.sampling
        model = self._model
        assert model is not None, "generate() before start()"
        sampler = RequestSampler(model, sampling)
        context = context_of(plan.prompt.token_ids)
        echo = None
        if sampling.echo:
            prompt = plan.prompt
            logprobs = (
                prompt_logprobs(model, prompt.token_ids, prompt.pieces, sampling.logprobs)
                if sampling.logprobs is not None
                else ()
            )
            echo = EchoPrefix("".join(prompt.pieces), logprobs)
        low, high = self.settings.response_length_min, self.settings.response_length_max
        calls_tool = plan.forced is not None and plan.forced.tool_name is not None
        decoders = []
        for index in range(sampling.best_of):
            rng = None
            if not sampler.greedy:
                rng = (
                    random.Random(f"{sampling.seed}/{index}")
                    if sampling.seed is not None
                    else random.Random()
                )
            natural_length = low + context % (high - low + 1) if rng is None else rng.randint(low, high)
            decoders.append(
                ChoiceDecoder(
                    index,
                    sampler,
                    context,
                    rng,
                    natural_length,
                    forced=plan.forced,
                    tool_call_id=_tool_call_id() if calls_tool else "",
                    echo=echo,
                    track_logprob=sampling.best_of > sampling.n,
                )
            )
        return decoders

    async def _stream(self, decoders: list[ChoiceDecoder]) -> AsyncIterator[engine_pb2.GenerateResponse]:
        """One token per live choice per step, choices in index order."""
        delay = self.settings.inter_token_latency
        live, steps = decoders, 0
        while live:
            finished = False
            for decoder in live:
                yield decoder.step()
                finished = finished or decoder.done
            if finished:
                live = [decoder for decoder in live if not decoder.done]
            self._check_serving()
            if not live:
                return  # the finish goes out with the last tokens, as an engine's last step sends it
            steps += 1
            if delay:
                await asyncio.sleep(delay)
            elif steps % _STEPS_PER_YIELD == 0:
                await asyncio.sleep(0)

    async def _best_of(
        self, decoders: list[ChoiceDecoder], n: int
    ) -> AsyncIterator[engine_pb2.GenerateResponse]:
        """Generates every candidate to the end, then streams the n with the highest cumulative logprob,
        best first, renumbered 0..n-1 (vLLM's V0 semantics; its V1 engine rejects best_of)."""
        outputs: dict[int, list[engine_pb2.GenerateResponse]] = {decoder.index: [] for decoder in decoders}
        async for event in self._stream(decoders):
            outputs[event.delta.index].append(event)
        ranked = sorted(decoders, key=lambda decoder: decoder.cumulative_logprob, reverse=True)[:n]
        for new_index, decoder in enumerate(ranked):
            for event in outputs[decoder.index]:
                event.delta.index = new_index
                yield event

    def _check_serving(self) -> None:
        if self._crashed or self._closed:
            raise EngineUnavailableError("The engine is not serving (its backend stopped).")

    # -- reports -------------------------------------------------------------------------------

    async def model_info(self) -> engine_pb2.GetModelInfoResponse:
        return engine_pb2.GetModelInfoResponse(
            served_model_name=self.served_model_name,
            max_model_len=self.settings.max_model_len,
            capabilities=engine_pb2.Capabilities(
                tools=True,
                structured_output=True,
                # Images are accepted and read as a placeholder token.
                vision=True,
                max_logprobs=self.settings.max_logprobs,
            ),
            backend="sim",
        )

    async def load(self) -> engine_pb2.GetLoadResponse:
        capacity = self.settings.cache_capacity_blocks
        in_use = sum(request.blocks(self.settings.block_size) for request in self._running)
        return engine_pb2.GetLoadResponse(
            running_requests=self._admission.running_requests,
            waiting_requests=self._admission.waiting_requests,
            kv_cache_usage=min(in_use / capacity, 1.0) if capacity else 0.0,
            prefix_cache_hit_rate=self._hit_rate.rate,
            serving=await self.is_healthy(),
        )


def _tool_call_id() -> str:
    """Unique per call, as OpenAI's are: request ids come from callers, who may reuse them."""
    return f"call_{uuid.uuid4().hex[:24]}"
