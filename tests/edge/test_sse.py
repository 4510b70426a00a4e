"""SSE framing of stream chunks."""

from __future__ import annotations

import json

from services.edge.errors import ApiError
from services.edge.sse import DONE, ChunkEncoder, error_event
from tests.openai_schema import assert_matches


def decode(event: bytes) -> dict:
    assert event.startswith(b"data: ") and event.endswith(b"\n\n") and event.count(b"\n\n") == 1
    return json.loads(event.removeprefix(b"data: "))


def test_chunks_share_the_head_and_carry_null_usage_only_when_usage_is_asked_for():
    with_usage = ChunkEncoder(
        id="chatcmpl-1", object="chat.completion.chunk", created=5, model="m", include_usage=True
    )
    chunk = decode(
        with_usage.choice({"index": 0, "delta": {"content": "hi"}, "logprobs": None, "finish_reason": None})
    )
    assert chunk == {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 5,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "logprobs": None, "finish_reason": None}],
        "usage": None,
    }
    assert_matches("CreateChatCompletionStreamResponse", chunk)
    last = decode(with_usage.usage({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}))
    assert last["choices"] == [] and last["usage"]["total_tokens"] == 3
    assert_matches("CreateChatCompletionStreamResponse", last)

    without = ChunkEncoder(id="cmpl-1", object="text_completion", created=5, model="m", include_usage=False)
    chunk = decode(without.choice({"index": 0, "text": 'a\n"b"', "logprobs": None, "finish_reason": "stop"}))
    assert "usage" not in chunk and chunk["choices"][0]["text"] == 'a\n"b"'
    assert_matches("CreateCompletionStreamResponse", chunk)


def test_errors_are_one_event_and_the_stream_ends_with_done():
    event = decode(error_event(ApiError(504, "The request timed out.", type="timeout_error", code="timeout")))
    assert_matches("ErrorResponse", event)
    assert DONE == b"data: [DONE]\n\n"
