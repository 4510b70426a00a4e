"""The prompts of a batch (GenerateRequest.batch) run side by side as one routed request.

The servicer decides, admits and settles a batch once, like any request; here each prompt becomes
its own dispatch (its own engine call, retries, fallbacks and resume, services/router/dispatch.py)
and their streams merge into the one stream the caller reads:
- one `routed` event (the first prompt's), sent once every prompt has its first output, so that a
  prompt refused up front (CONTEXT_LENGTH_EXCEEDED, no replica) refuses the whole request before the
  caller gets any output, as a one-prompt request would be;
- then the deltas as they come, choice j of prompt i renumbered i * n + j (the renumbering parses
  each delta: a batch is off the one-prompt hot path);
- `outcome` the sum of the prompts' outcomes, for the one settlement and request log row.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from services.router.dispatch import Dispatcher, Job, Outcome, bill_what_was_sent
from services.router.features import RequestFeatures
from switchyard.inference.v1 import inference_pb2
from switchyard.router.v1 import router_service_pb2 as router_pb2


def batch_jobs(
    job: Job, batch: Sequence[inference_pb2.GenerationInput], features: Sequence[RequestFeatures]
) -> list[Job]:
    """One job per prompt of `batch`, each otherwise like `job`, with its own prompt's `features`
    (what prefix affinity hashes and what a cancelled prompt is billed at). Engines need request ids
    unique among the requests they run, so prompt i runs as `<request id>-<i>`."""
    return [
        Job(
            request_id=f"{job.request_id}-{position}",
            generation=generation,
            features=prompt_features,
            plan=job.plan,
            customer=job.customer,
            reveal=job.reveal,
            time_remaining=job.time_remaining,
            named_model=job.named_model,
        )
        for position, (generation, prompt_features) in enumerate(zip(batch, features, strict=True))
    ]


class BatchRun:
    """Runs `jobs` concurrently as one stream (see the module docstring). Iterate `stream()` once;
    whatever way it ends, call `close()`, which cancels what still runs and fills the outcome."""

    def __init__(self, dispatcher: Dispatcher, jobs: Sequence[Job]) -> None:
        self._jobs = jobs
        self._outcomes = [Outcome() for _ in jobs]
        self._streams = [
            dispatcher.stream(job, outcome) for job, outcome in zip(jobs, self._outcomes, strict=True)
        ]
        self._finished = [False] * len(jobs)
        self._reading: dict[asyncio.Future, int] = {}  # the pending `anext` per stream position

    async def stream(self, outcome: Outcome) -> AsyncIterator[bytes | router_pb2.GenerateResponse]:
        firsts = [self._read(position) for position in range(len(self._streams))]
        # Every dispatch's first event is its `routed`: wait for all before the caller gets anything.
        routed = await asyncio.gather(*firsts)
        self._reading.clear()
        yield routed[0]
        offsets = [position * max(1, job.generation.sampling.n) for position, job in enumerate(self._jobs)]
        for position in range(len(self._streams)):
            self._read(position)
        transcript = outcome.transcript
        while self._reading:
            done, _ = await asyncio.wait(self._reading, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                position = self._reading.pop(task)
                try:
                    raw = task.result()
                except StopAsyncIteration:
                    self._finished[position] = True
                    continue
                self._read(position)
                event = router_pb2.GenerateResponse.FromString(raw)
                event.delta.index += offsets[position]
                renumbered = event.SerializeToString()
                transcript.append(renumbered)
                yield renumbered

    def _read(self, position: int) -> asyncio.Future:
        task = asyncio.ensure_future(anext(self._streams[position]))
        self._reading[task] = position
        return task

    async def close(self, outcome: Outcome) -> None:
        """Stops the prompts still running and sums the prompts' outcomes into `outcome`; a prompt
        that did not finish is billed for what its caller was sent (nothing if nothing was)."""
        reading = list(self._reading)
        self._reading.clear()
        for task in reading:
            task.cancel()
        await asyncio.gather(*reading, return_exceptions=True)
        for stream in self._streams:
            await stream.aclose()
        for job, part, finished in zip(self._jobs, self._outcomes, self._finished, strict=True):
            if not finished:
                bill_what_was_sent(job, part)
            _add(outcome, part)
        first = self._outcomes[0]
        outcome.model, outcome.replica = first.model, first.replica
        starts = [part.first_output_at for part in self._outcomes if part.first_output_at is not None]
        outcome.first_output_at = min(starts, default=None)


def _add(total: Outcome, part: Outcome) -> None:
    # Attempts count engine calls per prompt (1 = no retry): the batch's is its worst prompt's, so a
    # three-prompt request that needed no retry reports 1, not 3.
    total.attempts = max(total.attempts, part.attempts)
    total.resumed += part.resumed
    total.fallbacks_used.extend(part.fallbacks_used)
    total.usage.prompt_tokens += part.usage.prompt_tokens
    total.usage.completion_tokens += part.usage.completion_tokens
    total.usage.cached_tokens += part.usage.cached_tokens
    total.charges.extend(part.charges)
    total.cost += part.cost
