"""A GenerateRequest checked and resolved into what the simulator runs: prompt tokens, sampling with
defaults applied, and any output the request dictates. Every client error is raised here, before the
request waits for a slot or generates anything."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.errors import ContextLengthExceededError, InvalidRequestError, ModelNotFoundError
from services.engine.backends.sim.chat_template import render_chat
from services.engine.backends.sim.forced_output import ForcedOutput, forced_output
from services.engine.backends.sim.vocabulary import EOS_TOKEN_ID, VOCAB_SIZE, Tokenized, detokenize, tokenize
from services.engine.backends.sim_config import SimSettings
from switchyard.engine.v1 import engine_service_pb2 as engine_pb2
from switchyard.inference.v1 import inference_pb2

# Below this a temperature means greedy, as in vLLM.
_GREEDY_BELOW = 1e-5


@dataclass(frozen=True, slots=True)
class SamplingPlan:
    temperature: float  # 0: greedy
    top_k: int  # 0: off
    top_p: float
    min_p: float
    seed: int | None
    logit_bias: dict[int, float]
    stop: tuple[str, ...]
    stop_token_ids: frozenset[int]
    include_stop_str_in_output: bool
    max_tokens: int
    min_tokens: int
    ignore_eos: bool
    logprobs: int | None  # top alternatives per token; None: no logprobs
    echo: bool
    n: int
    best_of: int


@dataclass(frozen=True, slots=True)
class GenerationPlan:
    prompt: Tokenized
    sampling: SamplingPlan
    forced: ForcedOutput | None


def plan_generation(
    request: engine_pb2.GenerateRequest, settings: SimSettings, served_model_name: str
) -> GenerationPlan:
    if request.model and request.model != served_model_name:
        raise ModelNotFoundError(request.model)
    generation_input = request.input
    kind = generation_input.WhichOneof("input")
    forced = None
    # Text is tokenized only as far as the context window reaches (see _check_context).
    limit = settings.max_model_len + 1
    if kind == "prompt":
        prompt = tokenize(generation_input.prompt.text, limit)
    elif kind == "tokens":
        token_ids = generation_input.tokens.token_ids
        if any(token >= VOCAB_SIZE for token in token_ids):
            raise InvalidRequestError(
                f"Token ids must be below the vocabulary size {VOCAB_SIZE}.", param="prompt"
            )
        prompt = detokenize(token_ids)
    elif kind == "chat":
        prompt = tokenize(render_chat(generation_input.chat), limit)
        forced = forced_output(generation_input.chat)
    else:
        raise InvalidRequestError("The request has no prompt or messages.", param="input")
    what = "messages" if kind == "chat" else "prompt"
    # An empty text prompt is valid (OpenAI continues from nothing, as a real model does from its
    # BOS token); empty token lists and chats are not.
    if not prompt.token_ids and kind != "prompt":
        raise InvalidRequestError(f"The {what} is empty.", param=what)
    max_tokens = _check_context(
        len(prompt.token_ids), generation_input.sampling, settings.max_model_len, what
    )
    sampling = _plan_sampling(generation_input.sampling, settings, max_tokens)
    return GenerationPlan(prompt=prompt, sampling=sampling, forced=forced)


def _plan_sampling(
    params: inference_pb2.SamplingParams, settings: SimSettings, max_tokens: int
) -> SamplingPlan:
    temperature = params.temperature if params.HasField("temperature") else 1.0
    _require(temperature >= 0, "temperature must be at least 0.", "temperature")
    top_p = params.top_p if params.HasField("top_p") else 1.0
    _require(0 < top_p <= 1, "top_p must be in (0, 1].", "top_p")
    top_k = params.top_k if params.HasField("top_k") else 0
    _require(top_k >= -1, "top_k must be -1 (off), 0 (off) or positive.", "top_k")
    min_p = params.min_p if params.HasField("min_p") else 0.0
    _require(0 <= min_p <= 1, "min_p must be in [0, 1].", "min_p")
    # Accepted and range-checked like vLLM, but not modelled: the simulator's text has no meaning
    # for a repetition penalty to act on.
    if params.HasField("repetition_penalty"):
        _require(params.repetition_penalty > 0, "repetition_penalty must be positive.", "repetition_penalty")
    for name in ("presence_penalty", "frequency_penalty"):
        if params.HasField(name):
            _require(-2 <= getattr(params, name) <= 2, f"{name} must be in [-2, 2].", name)
    n = params.n or 1
    best_of = params.best_of if params.HasField("best_of") else n
    _require(best_of >= n, f"best_of ({best_of}) must be at least n ({n}).", "best_of")
    logprobs = params.logprobs if params.HasField("logprobs") else None
    if logprobs is not None:
        _require(
            logprobs <= settings.max_logprobs,
            f"logprobs may ask for at most {settings.max_logprobs} alternatives.",
            "logprobs",
        )
    for token, bias in params.logit_bias.items():
        _require(token < VOCAB_SIZE, f"logit_bias token {token} is not in the vocabulary.", "logit_bias")
        _require(-100 <= bias <= 100, "logit_bias values must be in [-100, 100].", "logit_bias")
    stop_token_ids = frozenset(params.stop_token_ids)
    _require(
        all(token < VOCAB_SIZE for token in stop_token_ids)
        and len(stop_token_ids | {EOS_TOKEN_ID}) < VOCAB_SIZE,
        "stop_token_ids must be vocabulary ids, and not all of them.",
        "stop_token_ids",
    )
    _require(all(params.stop), "stop strings must not be empty.", "stop")
    _require(
        params.min_tokens <= max_tokens,
        f"min_tokens ({params.min_tokens}) must not exceed max_tokens ({max_tokens}).",
        "min_tokens",
    )
    return SamplingPlan(
        temperature=0.0 if temperature < _GREEDY_BELOW else temperature,
        top_k=max(top_k, 0),
        top_p=top_p,
        min_p=min_p,
        seed=params.seed if params.HasField("seed") else None,
        logit_bias=dict(params.logit_bias),
        stop=tuple(params.stop),
        stop_token_ids=stop_token_ids,
        include_stop_str_in_output=params.include_stop_str_in_output,
        max_tokens=max_tokens,
        min_tokens=params.min_tokens,
        ignore_eos=params.ignore_eos,
        logprobs=logprobs,
        echo=params.echo,
        n=n,
        best_of=best_of,
    )


def _check_context(
    prompt_tokens: int, params: inference_pb2.SamplingParams, max_model_len: int, what: str
) -> int:
    """The max_tokens to use; raises when the prompt, or the prompt plus max_tokens, does not fit.
    A text prompt is counted only up to max_model_len + 1 tokens, hence "more than"."""
    if prompt_tokens > max_model_len:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {max_model_len} tokens. However, your {what} "
            f"resulted in more than {max_model_len} tokens. Please reduce the length of the {what}.",
            param=what,
        )
    if not params.HasField("max_tokens"):
        return max_model_len - prompt_tokens
    if prompt_tokens + params.max_tokens > max_model_len:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_tokens + params.max_tokens} tokens ({prompt_tokens} in the {what}, {params.max_tokens} "
            f"in the completion). Please reduce the length of the {what} or completion.",
            param="max_tokens",
        )
    return params.max_tokens


def _require(condition: bool, message: str, param: str) -> None:
    # Written so that NaN fails too: every comparison with NaN is false.
    if not condition:
        raise InvalidRequestError(message, param=param)
