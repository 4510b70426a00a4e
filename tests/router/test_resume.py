"""Mid-stream resume, the pure part: what the client was sent, and the request that continues it."""

from __future__ import annotations

import json

from services.router.registry import parse_registry
from services.router.resume import ChoiceProgress, Transcript, continuation_input, resume_blocker
from switchyard.inference.v1 import inference_pb2
from switchyard.router.v1 import router_service_pb2 as router_pb2
from tests.router.requests import chat_input, prompt_input

MODELS = parse_registry(
    """
models:
  - {id: a/one, provider: a, quality: .5, input_price: 1, output_price: 1, context_window: 9, replicas: [x:1]}
  - {id: a/two, provider: a, quality: .5, input_price: 1, output_price: 1, context_window: 9, replicas: [x:2]}
""",
    environ={},
)


def sent(text: str, tokens: int, *, finished: bool = False) -> ChoiceProgress:
    return ChoiceProgress(texts=[text], token_ids=list(range(tokens)), tokens=tokens, finished=finished)


def delta_event(index: int, text: str, token_ids: list[int], finish: int = 0) -> bytes:
    delta = inference_pb2.TokenDelta(index=index, text=text, token_ids=token_ids, finish_reason=finish)
    return router_pb2.GenerateResponse(delta=delta).SerializeToString()


def test_a_completion_continues_from_the_prompt_plus_the_text_sent():
    original = prompt_input("Once upon a time", max_tokens=20, n=3, min_tokens=8, echo=False, seed=7)
    continued = continuation_input(original, sent(" there was a fox", 5))
    assert continued.prompt.text == "Once upon a time there was a fox"
    assert (continued.sampling.max_tokens, continued.sampling.min_tokens, continued.sampling.n) == (15, 3, 1)
    assert continued.sampling.seed == 7
    assert original.prompt.text == "Once upon a time", "the original request is left as it was"


def test_a_chat_continues_the_assistant_s_partial_message():
    original = chat_input(("system", "Be brief."), ("user", "Tell me a story"), max_tokens=50)
    continued = continuation_input(original, sent("Once upon a", 3))
    last = continued.chat.messages[-1]
    assert (last.role, last.content) == ("assistant", "Once upon a")
    assert len(continued.chat.messages) == 3
    kwargs = json.loads(continued.chat.chat_template_kwargs_json)
    assert kwargs == {"continue_final_message": True, "add_generation_prompt": False}


def test_a_chat_that_already_continues_an_assistant_message_extends_it():
    original = chat_input(("user", "Finish my sentence"), ("assistant", "The quick brown"))
    original.chat.chat_template_kwargs_json = json.dumps(
        {"continue_final_message": True, "add_generation_prompt": False}
    )
    continued = continuation_input(original, sent(" fox jumps", 2))
    assert [m.content for m in continued.chat.messages] == ["Finish my sentence", "The quick brown fox jumps"]


def test_a_token_prompt_continues_with_the_token_ids_sent():
    original = inference_pb2.GenerationInput(tokens=inference_pb2.TokenPrompt(token_ids=[5, 6, 7]))
    continued = continuation_input(original, sent("abc", 3))
    assert list(continued.tokens.token_ids) == [5, 6, 7, 0, 1, 2]


def test_a_choice_whose_budget_is_spent_needs_no_continuation():
    assert continuation_input(prompt_input("hi", max_tokens=4), sent(" a b c d", 4)) is None
    nothing_sent = continuation_input(prompt_input("hi", max_tokens=4, echo=True), ChoiceProgress())
    assert nothing_sent.prompt.text == "hi" and nothing_sent.sampling.max_tokens == 4


def test_what_cannot_be_resumed_faithfully():
    assert resume_blocker(prompt_input("hi", echo=True), sent("hi there", 2)) == "echo"
    assert (
        resume_blocker(chat_input(("user", "hi"), json_schema=True), sent("{", 1)) == "a JSON response format"
    )
    calling = sent("", 1)
    calling.tool_calls = True
    assert resume_blocker(chat_input(("user", "hi"), tools=["f"]), calling) == "tool calls were streamed"
    assert resume_blocker(chat_input(("user", "hi")), sent("Hello", 1)) == ""


def test_the_transcript_rebuilds_each_choice_and_counts_tokens_per_model():
    one, two = MODELS.models
    transcript = Transcript()
    transcript.begin(one)
    transcript.append(delta_event(0, "Hello", [1]))
    transcript.append(delta_event(1, "Hi", [2]))
    transcript.append(delta_event(1, " there", [3], finish=inference_pb2.FINISH_REASON_STOP))
    transcript.begin(two)
    transcript.append(delta_event(0, " world", [4, 5]))
    choices = transcript.choices()
    assert (choices[0].text, choices[0].tokens, choices[0].finished) == ("Hello world", 3, False)
    assert (choices[1].text, choices[1].token_ids, choices[1].finished) == ("Hi there", [2, 3], True)
    assert transcript.tokens_by_model() == [(one, 3), (two, 2)]
