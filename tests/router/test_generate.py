"""Routed generation over real gRPC: the stream the caller sees, the engine call behind it."""

from __future__ import annotations

import grpc
import pytest

from services.common.errors import RemoteError
from switchyard.engine.v1 import engine_service_pb2 as engine_pb2
from switchyard.engine.v1 import engine_service_pb2_grpc as engine_grpc
from switchyard.inference.v1 import inference_pb2
from tests.router.requests import chat_input, generate_request, prompt_input

LENGTH = inference_pb2.FINISH_REASON_LENGTH


async def test_the_stream_is_routed_then_deltas_then_finished_with_the_engine_s_own_output(make_cluster):
    cluster = await make_cluster()
    generation = prompt_input("The weather today is", max_tokens=12, temperature=0, ignore_eos=True, n=2)
    reply = await cluster.generate(generate_request(generation, model="globex/mid"))

    assert reply.order[0] == "routed" and reply.order[-1] == "finished"
    assert set(reply.order[1:-1]) == {"delta"}
    assert reply.routed.model == "globex/mid"
    assert reply.routed.replica == cluster.engines["globex/mid"][0].address
    assert reply.finish_reasons() == {0: LENGTH, 1: LENGTH}
    assert reply.finished.usage.completion_tokens == 24

    # Byte for byte what the engine itself answers.
    engine = cluster.engines["globex/mid"][0]
    async with grpc.aio.insecure_channel(engine.address) as channel:
        direct = [
            event.delta
            async for event in engine_grpc.EngineServiceStub(channel).Generate(
                engine_pb2.GenerateRequest(model="globex/mid", input=generation)
            )
            if event.HasField("delta")
        ]
    assert direct == reply.deltas


async def test_the_request_id_reaches_the_engine(make_cluster):
    cluster = await make_cluster()
    generation = prompt_input("hi", max_tokens=2)
    await cluster.generate(
        generate_request(generation, model="globex/mid"), metadata=(("x-request-id", "req-42"),)
    )
    await cluster.generate(generate_request(generation, model="globex/mid", request_id="req-own"))
    anonymous = await cluster.generate(generate_request(generation, model="globex/mid"))
    seen = [request.request_id for request in cluster.engines["globex/mid"][0].backend.requests]
    assert seen[:2] == ["req-42", "req-own"]
    assert len(seen[2]) == 32, "made by the router when the caller gives none"
    assert anonymous.finished.usage.completion_tokens == 2


async def test_an_explicit_model_wins_and_an_alias_works(make_cluster):
    cluster = await make_cluster()
    hard = chat_input(("user", "Prove, step by step, that the square root of 2 is irrational."), max_tokens=4)
    assert (await cluster.generate(generate_request(hard, preference="powerful"))).routed.model == "acme/best"
    explicit = generate_request(hard, model="fast", exclude_providers=["acme"])
    assert (await cluster.generate(explicit)).routed.model == "acme/fast"


async def test_excluded_providers_are_never_chosen(make_cluster):
    cluster = await make_cluster()
    requests = [
        chat_input(("user", text), max_tokens=2)
        for text in ("hi", "Write a Python function that merges two sorted lists.", "Why is the sky blue?")
    ]
    for preference in ("balanced", "powerful", "efficient"):
        for generation in requests:
            without_acme = generate_request(generation, preference=preference, exclude_providers=["acme"])
            assert (await cluster.generate(without_acme)).routed.model == "globex/mid"
            without_globex = generate_request(generation, preference=preference, exclude_providers=["globex"])
            assert (await cluster.generate(without_globex)).routed.model.startswith("acme/")
    assert len(cluster.engines["globex/mid"][0].backend.requests) == 9


async def test_an_unknown_model_is_not_found(make_cluster):
    cluster = await make_cluster()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cluster.generate(generate_request(prompt_input("hi"), model="nobody/nothing"))
    error = RemoteError.from_rpc_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")


async def test_no_eligible_model_is_invalid_argument_with_the_reason(make_cluster):
    cluster = await make_cluster()
    request = generate_request(prompt_input("hi"), exclude_providers=["acme", "globex"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cluster.generate(request)
    error = RemoteError.from_rpc_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "NO_ELIGIBLE_MODEL")
    assert "globex/mid: provider 'globex' excluded by exclude_providers" in error.message
    assert not any(engine.backend.requests for engine in cluster.all_engines())


async def test_client_errors_from_the_engine_pass_through_unretried(make_cluster):
    cluster = await make_cluster()
    too_long = prompt_input("word " * 5000, max_tokens=4)  # the sim's max_model_len is 4096
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cluster.generate(generate_request(too_long, model="globex/mid", fallback_models=["acme/best"]))
    error = RemoteError.from_rpc_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "CONTEXT_LENGTH_EXCEEDED")
    assert [len(e.backend.requests) for e in cluster.all_engines()] == [0, 0, 1, 1], (
        "each model asked once: a prompt that does not fit moves on to the next model, not the next replica"
    )

    bad = prompt_input("hi", max_tokens=4, top_p=7.0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cluster.generate(generate_request(bad, model="acme/fast"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sum(len(e.backend.requests) for e in cluster.engines["acme/fast"]) == 1


async def test_list_and_get_models(make_cluster):
    cluster = await make_cluster()
    from switchyard.router.v1 import router_service_pb2 as router_pb2

    listed = await cluster.stub.ListModels(router_pb2.ListModelsRequest())
    assert [m.id for m in listed.models] == ["acme/fast", "acme/best", "globex/mid"]
    fast = (await cluster.stub.GetModel(router_pb2.GetModelRequest(id="fast"))).model
    assert (fast.id, fast.provider, fast.input_price, fast.output_price) == ("acme/fast", "acme", 0.5, 1.0)
    assert list(fast.aliases) == ["fast"] and fast.supports_tools and fast.created > 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cluster.stub.GetModel(router_pb2.GetModelRequest(id="nobody/nothing"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
