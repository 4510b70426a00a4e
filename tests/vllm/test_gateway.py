"""The OpenAI API through all three services on real vLLM: the official `openai` SDK talks to the
edge under uvicorn, which calls a real router, which calls the session's vLLM engine.

Random weights say nothing sensible, so the tests check what a client relies on: shapes (every body
and chunk against the official schemas), determinism, stop handling, structured output and tool
calls that parse, token accounting, cancellation reaching vLLM, and OpenAI errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import openai
import pytest

from services.edge.app import create_app
from services.edge.settings import EdgeSettings
from services.engine.backends.vllm import VllmBackend
from services.router.accounting import AccountingSettings, KeyPolicy
from services.router.accounting.cli import AMPLE_CREDITS
from services.router.server import RouterServer
from services.router.settings import RouterSettings
from tests.e2e.conftest import serve_app
from tests.engine.engine_client import EngineClient
from tests.openai_schema import assert_matches
from tests.vllm.conftest import ENGINE_SETTINGS, MODEL

pytestmark = pytest.mark.vllm

API_KEY = "sy-vllm-gateway-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# The response cache would answer repeated greedy requests without vLLM; these tests are about vLLM.
NO_CACHE = {"x-switchyard-cache": "off"}
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a river."}]
REGISTRY = """
models:
  - id: {model}
    provider: local
    quality: 0.5
    input_price: 1.0
    output_price: 2.0
    context_window: {context}
    capabilities: {{tools: true, json_schema: true, vision: false, max_logprobs: 20}}
    replicas: ["127.0.0.1:{port}"]
"""


@dataclass
class Gateway:
    base_url: str
    backend: VllmBackend

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.base_url}/v1", api_key=API_KEY, max_retries=0, default_headers=NO_CACHE
        )

    async def wait_until_vllm_is_idle(self, within: float = 10.0) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            left = self.backend.llm.get_num_unfinished_requests()
            if not left or loop.time() >= deadline:
                return left
            await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
async def gateway(engine: EngineClient, tmp_path_factory) -> AsyncIterator[Gateway]:
    folder = tmp_path_factory.mktemp("vllm-gateway")
    registry = folder / "models.yaml"
    context = ENGINE_SETTINGS["vllm"]["max_model_len"]
    registry.write_text(REGISTRY.format(model=MODEL, context=context, port=engine.server.port))
    accounting = AccountingSettings(
        database_url=f"sqlite+aiosqlite:///{folder / 'state.db'}", instance_name="v"
    )
    router = RouterServer(RouterSettings(port=0, registry_path=str(registry), accounting=accounting))
    await router.start()
    await router.accounting.keys.ensure(API_KEY, KeyPolicy(name="vllm", admin=True), credits=AMPLE_CREDITS)
    try:
        async with serve_app(
            create_app(EdgeSettings(port=0, router_address=f"127.0.0.1:{router.port}"))
        ) as port:
            yield Gateway(f"http://127.0.0.1:{port}", engine.server.backend)
    finally:
        await router.stop(0)


async def test_chat_completion_is_a_valid_openai_body(gateway: Gateway):
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=60) as http:
        response = await http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": CHAT, "max_tokens": 8},
            headers={**AUTH, **NO_CACHE},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert_matches("CreateChatCompletionResponse", body)
    assert body["usage"]["completion_tokens"] <= 8
    assert body["usage"]["prompt_tokens"] > 0


async def test_streamed_completion_equals_the_greedy_answer(gateway: Gateway):
    client = gateway.client()
    whole = await client.completions.create(model=MODEL, prompt="The river", max_tokens=12, temperature=0)
    stream = await client.completions.create(
        model=MODEL,
        prompt="The river",
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    for chunk in chunks[:-1]:
        assert_matches("CreateCompletionStreamResponse", chunk.to_dict())
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


async def test_n_choices_stream_with_one_finish_each(gateway: Gateway):
    stream = await gateway.client().chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=6, n=3, temperature=1.0, stream=True
    )
    finishes: dict[int, list[str]] = {}
    async for chunk in stream:
        assert_matches("CreateChatCompletionStreamResponse", chunk.to_dict())
        for choice in chunk.choices:
            finishes.setdefault(choice.index, [])
            if choice.finish_reason:
                finishes[choice.index].append(choice.finish_reason)
    assert {index: len(reasons) for index, reasons in finishes.items()} == {0: 1, 1: 1, 2: 1}


async def test_seed_repeats_and_stop_ends_before_the_stop_string(gateway: Gateway):
    client = gateway.client()

    async def sample(**kw) -> openai.types.Completion:
        return await client.completions.create(
            model=MODEL,
            prompt="Once",
            max_tokens=16,
            temperature=1.0,
            seed=11,
            extra_body={"ignore_eos": True},
            **kw,
        )

    first, second = await sample(), await sample()
    assert first.choices[0].text == second.choices[0].text
    text = first.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), "pick a visible stop string"
    stopped = await sample(stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[: text.index(stop)]


async def test_chat_logprobs_list_ranked_alternatives(gateway: Gateway):
    completion = await gateway.client().chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    tokens = completion.choices[0].logprobs.content
    assert len(tokens) == completion.usage.completion_tokens
    for token in tokens:
        assert len(token.top_logprobs) == 3
        assert token.top_logprobs[0].logprob >= token.top_logprobs[-1].logprob
        assert token.top_logprobs[0].token == token.token, "greedy picks the most likely token"


async def test_echo_with_logprobs_scores_the_prompt(gateway: Gateway):
    prompt = "def add(a, b):"
    completion = await gateway.client().completions.create(
        model=MODEL, prompt=prompt, max_tokens=3, echo=True, logprobs=1, temperature=0
    )
    choice = completion.choices[0]
    assert choice.text.startswith(prompt)
    assert choice.logprobs.token_logprobs[0] is None
    assert all(isinstance(value, float) for value in choice.logprobs.token_logprobs[1:])
    assert "".join(choice.logprobs.tokens) == choice.text


async def test_json_schema_output_parses_against_its_schema(gateway: Gateway):
    schema = {
        "type": "object",
        "properties": {
            "colour": {"type": "string", "enum": ["red", "green"]},
            "count": {"type": "integer", "maximum": 9},
        },
        "required": ["colour", "count"],
        "additionalProperties": False,
    }
    completion = await gateway.client().chat.completions.create(
        model=MODEL,
        messages=CHAT,
        max_tokens=40,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "thing", "schema": schema, "strict": True},
        },
    )
    value = json.loads(completion.choices[0].message.content)
    assert value["colour"] in ("red", "green") and 0 <= value["count"] <= 9


async def test_forced_tool_call_comes_back_as_tool_calls(gateway: Gateway):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "strict": True,
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                    "required": ["city"],
                    "additionalProperties": False,
                },
            },
        }
    ]
    completion = await gateway.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Rome?"}],
        tools=tools,
        max_tokens=40,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
    )
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in ("Paris", "Rome")


async def test_prompt_too_long_is_400_context_length_exceeded(gateway: Gateway):
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client().completions.create(model=MODEL, prompt="lorem ipsum " * 2000, max_tokens=4)
    error = caught.value.response.json()
    assert_matches("ErrorResponse", error)
    assert error["error"]["code"] == "context_length_exceeded"


async def test_client_disconnect_aborts_the_request_in_vllm(gateway: Gateway):
    body = {"model": MODEL, "prompt": "Count", "max_tokens": 900, "stream": True, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=60) as http:
        async with http.stream(
            "POST", "/v1/completions", json=body, headers={**AUTH, **NO_CACHE}
        ) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    break
            assert gateway.backend.llm.get_num_unfinished_requests() == 1
    assert await gateway.wait_until_vllm_is_idle() == 0
