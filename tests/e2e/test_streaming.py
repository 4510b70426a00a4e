"""Streams through all three services when the engine outruns the stream: the engine then sends
several tokens per message (services/engine/coalesce.py), and a client reassembling the stream with
the official SDK must get exactly what the same request answers without streaming."""

from __future__ import annotations

from tests.e2e.conftest import FAST_MODEL, Suite
from tests.openai_schema import assert_matches

# Greedy, so that the streamed and the whole answer are the same generation; never from the router's
# response cache, so that both are generated.
SAME_GENERATION = {"temperature": 0, "extra_body": {"ignore_eos": True, "cache": False}}


async def test_a_merged_completion_stream_reassembles_to_the_whole_answer(suite: Suite):
    client = suite.client()
    request = {"model": FAST_MODEL, "prompt": "Once upon a time", "max_tokens": 96, "n": 2, "logprobs": 3}
    whole = await client.completions.create(**request, **SAME_GENERATION)

    texts, finish_reasons, chunks_with_text = ["", ""], [None, None], 0
    logprobs = [{"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []} for _ in range(2)]
    stream = await client.completions.create(**request, stream=True, **SAME_GENERATION)
    async for chunk in stream:
        assert_matches("CreateCompletionStreamResponse", chunk.model_dump(mode="json", exclude_unset=True))
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            chunks_with_text += bool(choice.text)
            for name, values in logprobs[choice.index].items():
                values.extend(getattr(choice.logprobs, name))
            if choice.finish_reason is not None:
                assert finish_reasons[choice.index] is None, "one finish_reason per choice"
                finish_reasons[choice.index] = choice.finish_reason

    assert chunks_with_text < 2 * 96, "the engine outran the stream, so chunks carried several tokens"
    for choice in whole.choices:
        assert texts[choice.index] == choice.text
        assert finish_reasons[choice.index] == choice.finish_reason == "length"
        assert logprobs[choice.index] == choice.logprobs.model_dump()


async def test_a_merged_chat_stream_reassembles_to_the_whole_answer(suite: Suite):
    client = suite.client()
    request = {
        "model": FAST_MODEL,
        "messages": [{"role": "user", "content": "Tell me about rivers."}],
        "max_completion_tokens": 80,
        "n": 2,
        "logprobs": True,
        "top_logprobs": 2,
    }
    whole = await client.chat.completions.create(**request, **SAME_GENERATION)

    contents, finish_reasons, chunks_with_text = ["", ""], [None, None], 0
    token_logprobs: list[list[dict]] = [[], []]
    stream = await client.chat.completions.create(**request, stream=True, **SAME_GENERATION)
    async for chunk in stream:
        as_sent = chunk.model_dump(mode="json", exclude_unset=True)
        assert_matches("CreateChatCompletionStreamResponse", as_sent)
        for choice in chunk.choices:
            contents[choice.index] += choice.delta.content or ""
            chunks_with_text += bool(choice.delta.content)
            if choice.logprobs is not None:
                token_logprobs[choice.index] += [entry.model_dump() for entry in choice.logprobs.content]
            if choice.finish_reason is not None:
                assert finish_reasons[choice.index] is None, "one finish_reason per choice"
                finish_reasons[choice.index] = choice.finish_reason

    assert chunks_with_text < 2 * 80, "the engine outran the stream, so chunks carried several tokens"
    for choice in whole.choices:
        assert contents[choice.index] == choice.message.content
        assert finish_reasons[choice.index] == choice.finish_reason == "length"
        assert token_logprobs[choice.index] == [entry.model_dump() for entry in choice.logprobs.content]
