"""Builders for the requests router tests send: chats and prompts as the edge would translate them."""

from __future__ import annotations

from switchyard.inference.v1 import inference_pb2
from switchyard.router.v1 import router_service_pb2 as router_pb2

PREFERENCES = {
    "balanced": router_pb2.ROUTER_PREFERENCE_BALANCED,
    "powerful": router_pb2.ROUTER_PREFERENCE_POWERFUL,
    "efficient": router_pb2.ROUTER_PREFERENCE_EFFICIENT,
}


def sampling(
    *, max_tokens: int | None = None, n: int = 0, logprobs: int | None = None, **fields
) -> inference_pb2.SamplingParams:
    params = inference_pb2.SamplingParams(n=n, **fields)
    if max_tokens is not None:
        params.max_tokens = max_tokens
    if logprobs is not None:
        params.logprobs = logprobs
    return params


def chat_input(
    *messages: tuple[str, str],
    tools: list[str] = (),
    json_schema: bool = False,
    image: bool = False,
    **sampling_fields,
) -> inference_pb2.GenerationInput:
    chat = inference_pb2.Chat(
        messages=[inference_pb2.ChatMessage(role=role, content=content) for role, content in messages],
        tools=[inference_pb2.Tool(name=name, parameters_json='{"type": "object"}') for name in tools],
    )
    if json_schema:
        chat.response_format.type = inference_pb2.ResponseFormat.TYPE_JSON_SCHEMA
        chat.response_format.json_schema = '{"type": "object"}'
    if image:
        chat.messages.add(
            role="user",
            parts=[
                inference_pb2.ContentPart(text="What is in this picture?"),
                inference_pb2.ContentPart(image_url=inference_pb2.ImageUrl(url="data:image/png;base64,AAAA")),
            ],
        )
    return inference_pb2.GenerationInput(chat=chat, sampling=sampling(**sampling_fields))


def prompt_input(text: str, **sampling_fields) -> inference_pb2.GenerationInput:
    return inference_pb2.GenerationInput(
        prompt=inference_pb2.TextPrompt(text=text), sampling=sampling(**sampling_fields)
    )


def generate_request(
    generation: inference_pb2.GenerationInput,
    *,
    model: str = "",
    preference: str = "balanced",
    models: list[str] = (),
    fallback_models: list[str] = (),
    exclude_models: list[str] = (),
    exclude_providers: list[str] = (),
    **fields,
) -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        model=model,
        input=generation,
        routing=router_pb2.RoutingOptions(
            preference=PREFERENCES[preference],
            models=models,
            fallback_models=fallback_models,
            exclude_models=exclude_models,
            exclude_providers=exclude_providers,
        ),
        **fields,
    )
