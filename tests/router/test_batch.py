"""A batch of prompts (GenerateRequest.batch) over real gRPC: one routed stream, one engine call
per prompt, choices numbered i * n + j, usage summed, refusals before any output."""

from __future__ import annotations

import grpc
import pytest

from services.common.errors import RemoteError
from switchyard.router.v1 import router_service_pb2 as router_pb2
from tests.router.requests import prompt_input

PROMPTS = ["The weather today is", "Once upon a time", "In the beginning"]


def batch_request(prompts: list[str], *, model: str = "globex/mid", **sampling) -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        model=model, batch=[prompt_input(prompt, **sampling) for prompt in prompts]
    )


async def test_a_batch_streams_every_prompt_s_choices_under_one_routed_event(make_cluster):
    cluster = await make_cluster()
    sampling = {"max_tokens": 3, "temperature": 0, "ignore_eos": True, "n": 2}
    request = batch_request(PROMPTS, **sampling)
    request.request_breakdown = True
    reply = await cluster.generate(request, metadata=(("x-request-id", "b-1"),))

    assert reply.order.count("routed") == 1 and reply.order[0] == "routed" and reply.order[-1] == "finished"
    assert sorted(reply.finish_reasons()) == list(range(6))
    assert reply.finished.usage.completion_tokens == 3 * 2 * 3
    assert reply.finished.breakdown.attempts == 1, "three prompts, none retried: one attempt, not three"
    engine_requests = [request for engine in cluster.all_engines() for request in engine.backend.requests]
    assert sorted(request.request_id for request in engine_requests) == ["b-1-0", "b-1-1", "b-1-2"]
    alone = [
        await cluster.generate(
            router_pb2.GenerateRequest(model="globex/mid", input=prompt_input(prompt, **sampling))
        )
        for prompt in PROMPTS
    ]
    assert reply.finished.usage.prompt_tokens == sum(one.finished.usage.prompt_tokens for one in alone)
    # Prompt i's choices are what that prompt alone gives, at i * n + j.
    assert [reply.text(index) for index in range(6)] == [one.text(j) for one in alone for j in (0, 1)]


async def test_a_prompt_that_fits_nowhere_refuses_the_batch_before_any_output(make_cluster):
    cluster = await make_cluster()
    prompts = ["hi", "word " * 5000]  # the sim's max_model_len is 4096
    events = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for event in cluster.stub.Generate(batch_request(prompts, max_tokens=4)):
            events.append(event)
    assert events == [], "no routed event, no delta: the caller gets the error alone"
    error = RemoteError.from_rpc_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "CONTEXT_LENGTH_EXCEEDED")
