"""A reasoning parser configured (deepseek_r1): what the model writes before </think> comes back as
`reasoning`, not as content. Runs its own engine with the parser on."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from switchyard.inference.v1 import inference_pb2
from tests.engine.engine_client import EngineClient, request, running_engine
from tests.vllm.conftest import ENGINE_SETTINGS

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
async def reasoning_engine() -> AsyncIterator[EngineClient]:
    vllm_settings = {**ENGINE_SETTINGS["vllm"], "reasoning_parser": "deepseek_r1"}
    async with running_engine(**{**ENGINE_SETTINGS, "vllm": vllm_settings}) as client:
        yield client


async def test_text_before_the_end_of_thinking_is_reasoning(
    reasoning_engine: EngineClient, engine: EngineClient
):
    chat = inference_pb2.Chat(messages=[inference_pb2.ChatMessage(role="user", content="Think first.")])
    sampled = {"chat": chat, "max_tokens": 12, "seed": 3, "ignore_eos": True}
    plain = await engine.generate(request(**sampled))
    thinking = await reasoning_engine.generate(request(**sampled))

    # Same model, same seed: the same tokens, which the parser files as reasoning (no </think> yet).
    assert thinking.choices[0].token_ids == plain.choices[0].token_ids
    reasoning = "".join(event.delta.reasoning for event in thinking.events if event.HasField("delta"))
    assert reasoning == plain.text
    assert thinking.text == ""
