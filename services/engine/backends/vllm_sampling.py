"""The contract's SamplingParams as vLLM's SamplingParams.

An unset field takes the model's default (its generation_config, as vLLM's server does), then
OpenAI's. vLLM validates the result and raises for bad values; the backend maps that to
INVALID_ARGUMENT.
"""

from __future__ import annotations

from typing import Any

from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

from switchyard.inference.v1 import inference_pb2

# OpenAI's defaults for what neither the request nor the model's generation_config sets.
_OPENAI_DEFAULTS: dict[str, float | int] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}


def vllm_sampling_params(
    sampling: inference_pb2.SamplingParams,
    *,
    max_tokens: int,
    model_defaults: dict[str, Any],
    candidates: int,
    structured_outputs: StructuredOutputsParams | None = None,
    skip_special_tokens: bool = True,
) -> SamplingParams:
    """`candidates` sequences are sampled: n, or best_of when the best are picked afterwards
    (which needs their cumulative logprobs, so logprobs are then always computed)."""
    values = {
        name: getattr(sampling, name) if sampling.HasField(name) else model_defaults.get(name, default)
        for name, default in _OPENAI_DEFAULTS.items()
    }
    if values["top_k"] == -1:  # vLLM's older spelling of "all tokens"
        values["top_k"] = 0
    best_of = candidates > max(sampling.n, 1)
    logprobs = sampling.logprobs if sampling.HasField("logprobs") else (0 if best_of else None)
    return SamplingParams.from_optional(
        **values,
        n=candidates,
        seed=sampling.seed if sampling.HasField("seed") else None,
        stop=list(sampling.stop),
        stop_token_ids=list(sampling.stop_token_ids),
        include_stop_str_in_output=sampling.include_stop_str_in_output,
        ignore_eos=sampling.ignore_eos,
        max_tokens=max_tokens,
        min_tokens=sampling.min_tokens,
        logprobs=logprobs,
        # Echo with logprobs scores the prompt too, with as many alternatives as the completion.
        prompt_logprobs=sampling.logprobs if sampling.echo and sampling.HasField("logprobs") else None,
        logit_bias=dict(sampling.logit_bias) or None,
        skip_special_tokens=skip_special_tokens,
        structured_outputs=structured_outputs,
        # Candidates are ranked once complete; everything else streams.
        output_kind=RequestOutputKind.FINAL_ONLY if best_of else RequestOutputKind.DELTA,
    )
