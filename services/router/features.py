"""What the router can see of a request cheaply, extracted once and shared by scoring, model choice
and replica choice. No tokenizer: token counts are estimates (characters / chars_per_token), except
for token prompts, which are counted exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass

from switchyard.inference.v1 import inference_pb2

# Tokens an image is assumed to cost in the prompt (roughly one 512-pixel tile in OpenAI's accounting).
IMAGE_TOKEN_ESTIMATE = 765
# Chat templates add a few tokens per message (role markers, separators).
TOKENS_PER_MESSAGE = 4
# Scoring reads at most this many characters of the last user message (its start and its end, where
# people put what they ask for) and of the instructions (their start), so its cost stays bounded.
SCORING_TEXT_LIMIT = 2000
INSTRUCTIONS_LIMIT = 1000

_RESPONSE_FORMAT = inference_pb2.ResponseFormat


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    kind: str  # "chat", "prompt" or "tokens"
    prompt_chars: int
    prompt_tokens: int  # estimated (exact for token prompts)
    turns: int  # chat messages; 1 for a prompt
    max_tokens: int | None
    n: int
    wants_tools: bool
    wants_json: bool  # json_object or json_schema
    wants_json_schema: bool
    top_logprobs: int | None  # top alternatives asked for; None when logprobs are not asked for
    has_images: bool
    instructions: str  # system and developer messages, clipped
    last_user_text: str  # the last user message, or the prompt, clipped
    # The text (or token ids, as bytes) whose leading blocks prefix affinity hashes: the whole
    # conversation in order, so the next turn of a conversation starts with this turn's blocks.
    affinity_source: str | bytes

    @property
    def output_tokens_requested(self) -> int | None:
        return None if self.max_tokens is None else self.max_tokens * self.n


def scoring_window(text: str) -> str:
    if len(text) <= SCORING_TEXT_LIMIT:
        return text
    half = SCORING_TEXT_LIMIT // 2
    return f"{text[:half]}\n{text[-half:]}"


def _message_text(message: inference_pb2.ChatMessage) -> tuple[str, int]:
    """The message's text (images as short placeholders) and how many images it carries."""
    if not message.parts:
        return (message.content if message.HasField("content") else ""), 0
    texts, images = [], 0
    for part in message.parts:
        if part.HasField("image_url"):
            images += 1
            # Stands in for the image in the affinity source: a data URL can be megabytes long.
            texts.append(f"\x1c{hash(part.image_url.url):x}")
        else:
            texts.append(part.text)
    return "\n".join(texts), images


def extract_features(generation: inference_pb2.GenerationInput, chars_per_token: float) -> RequestFeatures:
    sampling = generation.sampling
    max_tokens = sampling.max_tokens if sampling.HasField("max_tokens") else None
    n = max(1, sampling.n, sampling.best_of if sampling.HasField("best_of") else 0)
    top_logprobs = sampling.logprobs if sampling.HasField("logprobs") else None
    which = generation.WhichOneof("input")

    if which == "tokens":
        token_ids = generation.tokens.token_ids
        return RequestFeatures(
            kind="tokens",
            prompt_chars=0,
            prompt_tokens=len(token_ids),
            turns=1,
            max_tokens=max_tokens,
            n=n,
            wants_tools=False,
            wants_json=False,
            wants_json_schema=False,
            top_logprobs=top_logprobs,
            has_images=False,
            instructions="",
            last_user_text="",
            affinity_source=b"".join(token.to_bytes(4, "little") for token in token_ids),
        )
    if which != "chat":
        text = generation.prompt.text
        return RequestFeatures(
            kind="prompt",
            prompt_chars=len(text),
            prompt_tokens=math.ceil(len(text) / chars_per_token),
            turns=1,
            max_tokens=max_tokens,
            n=n,
            wants_tools=False,
            wants_json=False,
            wants_json_schema=False,
            top_logprobs=top_logprobs,
            has_images=False,
            instructions="",
            last_user_text=scoring_window(text),
            affinity_source=text,
        )

    chat = generation.chat
    # Tool definitions go first: chat templates render them into the system prompt.
    pieces = [f"{tool.name}\x1f{tool.parameters_json}\x1e" for tool in chat.tools]
    instructions, last_user, images = [], "", 0
    for message in chat.messages:
        text, message_images = _message_text(message)
        images += message_images
        pieces.append(f"{message.role}\x1f{text}")
        for call in message.tool_calls:
            pieces.append(f"\x1d{call.function_name}\x1f{call.function_arguments}")
        pieces.append("\x1e")
        if message.role in ("system", "developer"):
            instructions.append(text)
        elif message.role == "user":
            last_user = text
    source = "".join(pieces)
    prompt_tokens = (
        math.ceil(len(source) / chars_per_token)
        + TOKENS_PER_MESSAGE * len(chat.messages)
        + IMAGE_TOKEN_ESTIMATE * images
    )
    format_type = chat.response_format.type
    return RequestFeatures(
        kind="chat",
        prompt_chars=len(source),
        prompt_tokens=prompt_tokens,
        turns=len(chat.messages),
        max_tokens=max_tokens,
        n=n,
        wants_tools=len(chat.tools) > 0 and chat.tool_choice != "none",
        wants_json=format_type in (_RESPONSE_FORMAT.TYPE_JSON_OBJECT, _RESPONSE_FORMAT.TYPE_JSON_SCHEMA),
        wants_json_schema=format_type == _RESPONSE_FORMAT.TYPE_JSON_SCHEMA,
        top_logprobs=top_logprobs,
        has_images=images > 0,
        instructions="\n".join(instructions)[:INSTRUCTIONS_LIMIT],
        last_user_text=scoring_window(last_user),
        affinity_source=source,
    )
