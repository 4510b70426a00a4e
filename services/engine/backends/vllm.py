"""The vLLM backend: vLLM's AsyncLLM in-process, serving one model and its LoRA adapters.

This and its `vllm_*` helper modules are the only code that imports vLLM; the engine imports this
module only when the vllm backend is chosen.

What it adds to AsyncLLM, and why:
- Chat goes through the model's own template with vLLM's renderer; tool calls come back parsed by
  the configured vLLM tool parser, as streamed deltas.
- `best_of` (which vLLM's V1 engine rejects) is served here: best_of candidates are sampled and the
  n with the highest cumulative logprob are returned. The candidates are ranked once complete, so
  such a request streams nothing until every candidate has finished; all candidates' tokens count
  as completion tokens, as OpenAI bills them.
- `echo` returns the prompt as each choice's first delta, with the prompt's logprobs when logprobs
  are requested; echo with max_tokens 0 returns only that (the way to score a prompt).
- A prompt that does not leave room for max_tokens in the context window is refused
  (CONTEXT_LENGTH_EXCEEDED), as OpenAI does, instead of silently shortening the completion.
- Cancellation: `generate` iterates AsyncLLM.generate directly and closes it when the consumer
  stops, which aborts the request in the engine before `generate` finishes closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import jinja2
import pydantic
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import GracefulHTTPError, VLLMClientError, VLLMValidationError
from vllm.inputs import EngineInput, TokensPrompt
from vllm.lora.request import LoRARequest
from vllm.outputs import RequestOutput
from vllm.renderers import TokenizeParams
from vllm.renderers.inputs.preprocess import parse_model_prompt
from vllm.sampling_params import SamplingParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError

from services.common.errors import (
    ContextLengthExceededError,
    EngineUnavailableError,
    InvalidRequestError,
    ModelNotFoundError,
)
from services.engine.backends.vllm_chat import ChatRenderer, chat_completion_request
from services.engine.backends.vllm_config import VllmSettings
from services.engine.backends.vllm_load import LoadTracker
from services.engine.backends.vllm_outputs import ChatParsing, ChoiceStream, best_candidates, echo_delta
from services.engine.backends.vllm_sampling import vllm_sampling_params
from services.engine.tiny_model import ensure_tiny_model
from switchyard.engine.v1 import engine_service_pb2 as engine_pb2
from switchyard.inference.v1 import inference_pb2

logger = logging.getLogger(__name__)

# vLLM's tokenizer reports a prompt over the context window with these parameter names.
_PROMPT_LENGTH_PARAMS = frozenset({"input_tokens", "input_text"})


@dataclass(slots=True)
class _Prepared:
    """One request, ready for the engine."""

    engine_input: EngineInput
    params: SamplingParams
    prompt_token_ids: list[int]
    n: int
    # The alternatives per token to return; None: no logprobs (best_of computes them to rank).
    top_logprobs: int | None
    # More candidates than choices: rank them once complete (FINAL_ONLY outputs).
    best_of: bool
    # How each choice's output is parsed (chat with tools or reasoning), else None.
    chat_parsing: ChatParsing | None = None
    # Echo: the prompt text to return first; None without echo.
    echo_text: str | None = None
    # Echo with max_tokens 0: the prompt only, no completion.
    prompt_only: bool = False
    # More keyword arguments for AsyncLLM.generate (chat: where reasoning ends).
    generate_kwargs: dict[str, Any] = field(default_factory=dict)


class VllmBackend:
    """A GenerationBackend (services.engine.backends.base) on vLLM's AsyncLLM."""

    def __init__(self, settings: VllmSettings, served_model_name: str) -> None:
        self._settings = settings
        self._served_model_name = served_model_name
        self._llm: AsyncLLM | None = None
        self._chat: ChatRenderer | None = None
        self._load: LoadTracker | None = None
        self._loras: dict[str, LoRARequest] = {}
        self._model_defaults: dict[str, Any] = {}

    @property
    def llm(self) -> AsyncLLM:
        """The running engine (diagnostics and tests); EngineUnavailableError when there is none."""
        return self._engine()

    async def start(self) -> None:
        settings = self._settings
        if not settings.model:
            settings = settings.for_tiny_model(await asyncio.to_thread(ensure_tiny_model))
            self._settings = settings
        engine_args = AsyncEngineArgs(**settings.engine_kwargs(self._served_model_name))

        def track_load(vllm_config, engine_index: int) -> LoadTracker:
            self._load = LoadTracker(vllm_config, engine_index)
            return self._load

        logger.info("starting vLLM for %s (%s)", self._served_model_name, settings.model)
        # Blocks until the engine core is up, like vLLM's own server at startup; the engine server
        # reports NOT_SERVING until start() returns.
        self._llm = AsyncLLM.from_engine_args(engine_args, stat_loggers=[track_load])
        self._chat = ChatRenderer(self._llm, settings)
        self._model_defaults = self._llm.model_config.get_diff_sampling_param()
        self._loras = {
            name: LoRARequest(lora_name=name, lora_int_id=i, lora_path=path)
            for i, (name, path) in enumerate(sorted(settings.lora_adapters.items()), start=1)
        }

    async def close(self) -> None:
        """After the server has drained: no generation is left to serve."""
        llm, self._llm = self._llm, None
        if llm is None:
            return
        # vLLM's shutdown stops the engine core before the output handler, which then reports the
        # engine's death as an error with a traceback; stopping the handler first keeps a clean
        # shutdown quiet.
        if llm.output_handler is not None:
            llm.output_handler.cancel()
            await asyncio.wait([llm.output_handler])
        # Joins the engine core process, which may take a moment: off the event loop.
        await asyncio.to_thread(llm.shutdown)

    async def is_healthy(self) -> bool:
        return self._llm is not None and not self._llm.errored

    async def model_info(self) -> engine_pb2.GetModelInfoResponse:
        llm, chat = self._engine(), self._chat
        assert chat is not None
        model_config = llm.model_config
        max_logprobs = model_config.max_logprobs
        return engine_pb2.GetModelInfoResponse(
            served_model_name=self._served_model_name,
            max_model_len=model_config.max_model_len,
            lora_adapters=[
                engine_pb2.LoraAdapter(name=lora.lora_name, path=lora.lora_path)
                for lora in self._loras.values()
            ],
            capabilities=engine_pb2.Capabilities(
                tools=chat.parses_tool_calls,
                # xgrammar / guidance / outlines ship with vLLM: structured outputs always work.
                structured_output=True,
                vision=model_config.is_multimodal_model,
                # -1 is vLLM's "the whole vocabulary".
                max_logprobs=max_logprobs if max_logprobs >= 0 else model_config.get_vocab_size(),
            ),
            backend="vllm",
        )

    async def load(self) -> engine_pb2.GetLoadResponse:
        llm, load = self._llm, self._load
        if llm is None or load is None:
            return engine_pb2.GetLoadResponse(serving=False)
        return load.report(unfinished_requests=llm.get_num_unfinished_requests(), serving=not llm.errored)

    async def generate(
        self, request: engine_pb2.GenerateRequest
    ) -> AsyncIterator[engine_pb2.GenerateResponse]:
        llm = self._engine()
        lora = self._lora_for(request.model)
        request_id = request.request_id or uuid.uuid4().hex
        outputs = None
        try:
            prepared = await self._prepare(request.input)
            outputs = llm.generate(
                prepared.engine_input,
                prepared.params,
                request_id,
                lora_request=lora,
                **prepared.generate_kwargs,
            )
            first = await anext(outputs)
        except EngineDeadError as error:
            raise EngineUnavailableError("the vLLM engine has stopped") from error
        except GracefulHTTPError as error:
            # Admission control (max_num_queued_reqs / tokens, when configured): another replica.
            raise EngineUnavailableError(error.message) from error
        except (VLLMClientError, ValueError, jinja2.TemplateError) as error:
            # Before the first output, these are vLLM (SamplingParams and its input processing raise
            # ValueError, as vLLM's own server answers 400 for) or the chat template refusing the
            # request. Anything else is our bug or vLLM's and stays a generic INTERNAL.
            if outputs is not None:
                await outputs.aclose()
            raise _invalid_request(error) from error
        events = (self._best_of if prepared.best_of else self._stream)(prepared, first, outputs)
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    yield event
        except EngineDeadError as error:
            raise EngineUnavailableError("the vLLM engine stopped during the generation") from error
        finally:
            # Closing vLLM's generator aborts the request there, unless it already finished.
            await outputs.aclose()

    async def _stream(
        self, prepared: _Prepared, first: RequestOutput, outputs: AsyncIterator[RequestOutput]
    ) -> AsyncIterator[engine_pb2.GenerateResponse]:
        choices = [self._choice_stream(prepared, index) for index in range(prepared.n)]
        if prepared.echo_text is not None:
            for index in range(prepared.n):
                yield self._echo(prepared, first, index)
        cached_tokens = first.num_cached_tokens or 0
        result: RequestOutput | None = first
        while result is not None:
            for output in result.outputs:
                choice = choices[output.index]
                if prepared.prompt_only:
                    if output.finish_reason is not None:
                        yield choice.finish_only()
                    continue
                event = choice.event(output)
                if event is not None:
                    yield event
            cached_tokens = max(cached_tokens, result.num_cached_tokens or 0)
            result = await anext(outputs, None)
        yield _finished(prepared, sum(c.tokens for c in choices), cached_tokens)

    async def _best_of(
        self, prepared: _Prepared, first: RequestOutput, outputs: AsyncIterator[RequestOutput]
    ) -> AsyncIterator[engine_pb2.GenerateResponse]:
        final = first
        async for result in outputs:  # FINAL_ONLY: the candidates arrive complete
            final = result
        for index, candidate in enumerate(best_candidates(final.outputs, prepared.n)):
            if prepared.echo_text is not None:
                yield self._echo(prepared, first, index)
            event = self._choice_stream(prepared, index).event(candidate)
            if event is not None:
                yield event
        generated = sum(len(candidate.token_ids) for candidate in final.outputs)
        yield _finished(prepared, generated, final.num_cached_tokens or 0)

    async def _prepare(self, generation: inference_pb2.GenerationInput) -> _Prepared:
        sampling = generation.sampling
        if sampling.HasField("max_tokens") and sampling.max_tokens == 0 and not sampling.echo:
            raise InvalidRequestError("max_tokens must be at least 1", param="max_tokens")
        if generation.HasField("chat"):
            if sampling.echo:
                raise InvalidRequestError("echo is only supported for completions", param="echo")
            return await self._prepare_chat(generation.chat, sampling)
        return await self._prepare_completion(generation, sampling)

    async def _prepare_chat(
        self, chat: inference_pb2.Chat, sampling: inference_pb2.SamplingParams
    ) -> _Prepared:
        assert self._chat is not None
        request = chat_completion_request(chat, sampling)
        engine_input = await self._chat.render(request)
        prompt_token_ids = list(engine_input["prompt_token_ids"])
        params = vllm_sampling_params(
            sampling,
            max_tokens=self._max_tokens(sampling, len(prompt_token_ids), param="messages"),
            model_defaults=self._model_defaults,
            candidates=_candidates(sampling),
            # Set by response_format, or by the tool parser for named / "required" tool_choice.
            structured_outputs=request.extract_structured_outputs(),
            skip_special_tokens=request.skip_special_tokens,
        )
        return _Prepared(
            engine_input=engine_input,
            params=params,
            prompt_token_ids=prompt_token_ids,
            n=max(sampling.n, 1),
            top_logprobs=_top_logprobs(sampling),
            best_of=_candidates(sampling) > max(sampling.n, 1),
            chat_parsing=ChatParsing(request) if self._chat.needs_parser(request) else None,
            generate_kwargs=self._chat.generate_kwargs(request, prompt_token_ids),
        )

    async def _prepare_completion(
        self, generation: inference_pb2.GenerationInput, sampling: inference_pb2.SamplingParams
    ) -> _Prepared:
        llm = self._engine()
        if generation.HasField("prompt"):
            prompt = parse_model_prompt(llm.model_config, generation.prompt.text)
        elif generation.HasField("tokens"):
            prompt = TokensPrompt(prompt_token_ids=list(generation.tokens.token_ids))
        else:
            raise InvalidRequestError("the request has no prompt, tokens or chat", param="input")
        tokenize = TokenizeParams(
            max_total_tokens=llm.model_config.max_model_len,
            add_special_tokens=True,
            # Echo returns the prompt as text, also when it came as token ids.
            needs_detokenization=sampling.echo,
            max_total_tokens_param="max_model_len",
        )
        (engine_input,) = await llm.renderer.render_cmpl_async([prompt], tokenize)
        prompt_token_ids = list(engine_input["prompt_token_ids"])
        prompt_only = sampling.echo and sampling.HasField("max_tokens") and sampling.max_tokens == 0
        if prompt_only:
            # One step scores the prompt; its token is not returned, and with no completion every
            # best_of candidate would be the same.
            max_tokens, candidates = 1, max(sampling.n, 1)
        else:
            max_tokens = self._max_tokens(sampling, len(prompt_token_ids), param="prompt")
            candidates = _candidates(sampling)
        params = vllm_sampling_params(
            sampling,
            max_tokens=max_tokens,
            model_defaults=self._model_defaults,
            candidates=candidates,
            skip_special_tokens=not sampling.HasField("skip_special_tokens") or sampling.skip_special_tokens,
        )
        return _Prepared(
            engine_input=engine_input,
            params=params,
            prompt_token_ids=prompt_token_ids,
            n=max(sampling.n, 1),
            top_logprobs=_top_logprobs(sampling),
            best_of=candidates > max(sampling.n, 1),
            echo_text=engine_input.get("prompt", "") if sampling.echo else None,
            prompt_only=prompt_only,
        )

    def _max_tokens(self, sampling: inference_pb2.SamplingParams, prompt_tokens: int, *, param: str) -> int:
        context = self._engine().model_config.max_model_len
        room = context - prompt_tokens
        if room <= 0:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {context} tokens, but the prompt has "
                f"{prompt_tokens} tokens, which leaves no room for a completion. "
                "Please shorten the prompt.",
                param=param,
            )
        if not sampling.HasField("max_tokens"):
            return min(room, self._model_defaults.get("max_tokens", room))
        if sampling.max_tokens > room:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{prompt_tokens + sampling.max_tokens} tokens ({prompt_tokens} in the prompt, "
                f"{sampling.max_tokens} for the completion). Please reduce the prompt or max_tokens.",
                param=param,
            )
        return sampling.max_tokens

    def _choice_stream(self, prepared: _Prepared, index: int) -> ChoiceStream:
        chat = prepared.chat_parsing
        if chat is None:
            return ChoiceStream(index, top_logprobs=prepared.top_logprobs)
        assert self._chat is not None
        return ChoiceStream(
            index,
            top_logprobs=prepared.top_logprobs,
            parser=self._chat.new_parser(chat.request),
            chat=chat,
            prompt_token_ids=prepared.prompt_token_ids,
        )

    def _echo(self, prepared: _Prepared, first: RequestOutput, index: int) -> engine_pb2.GenerateResponse:
        assert prepared.echo_text is not None
        first_token = self._engine().renderer.get_tokenizer().decode(prepared.prompt_token_ids[:1])
        return echo_delta(
            index,
            prepared.echo_text,
            prepared.prompt_token_ids,
            first.prompt_logprobs,
            prepared.top_logprobs,
            first_token,
        )

    def _lora_for(self, model: str) -> LoRARequest | None:
        if not model or model == self._served_model_name:
            return None
        lora = self._loras.get(model)
        if lora is None:
            raise ModelNotFoundError(model)
        return lora

    def _engine(self) -> AsyncLLM:
        llm = self._llm
        if llm is None or llm.errored:
            raise EngineUnavailableError("the vLLM engine is not running")
        return llm


def _candidates(sampling: inference_pb2.SamplingParams) -> int:
    return max(sampling.n, sampling.best_of, 1)


def _top_logprobs(sampling: inference_pb2.SamplingParams) -> int | None:
    return sampling.logprobs if sampling.HasField("logprobs") else None


def _finished(prepared: _Prepared, completion_tokens: int, cached_tokens: int) -> engine_pb2.GenerateResponse:
    usage = inference_pb2.Usage(
        prompt_tokens=len(prepared.prompt_token_ids),
        completion_tokens=completion_tokens,
        cached_tokens=cached_tokens,
    )
    return engine_pb2.GenerateResponse(finished=engine_pb2.GenerateFinished(usage=usage))


def _invalid_request(error: Exception) -> InvalidRequestError:
    if isinstance(error, pydantic.ValidationError):
        return InvalidRequestError(error.errors()[0]["msg"])
    param = getattr(error, "parameter", None)
    message = str(error.args[0]) if error.args else str(error)
    if isinstance(error, VLLMValidationError) and param in _PROMPT_LENGTH_PARAMS:
        return ContextLengthExceededError(message, param="prompt")
    return InvalidRequestError(message, param=param)
