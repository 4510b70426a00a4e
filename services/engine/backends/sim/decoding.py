"""One choice, token by token: choosing the token, the stop conditions, and the delta a client sees.

`ChoiceDecoder.step()` produces one token and returns it as a ready `GenerateResponse`; the backend
interleaves the choices of a request and decides when each step happens. Everything here is plain,
synchronous and deterministic for a given random stream, so it is cheap per token and testable alone.

Semantics, following vLLM where the contract does not say:
- EOS counts as a completion token with empty text; it ends the choice (finish "stop", empty
  stop_reason) unless ignore_eos. Before min_tokens, EOS and stop_token_ids are banned and stop strings
  are not matched.
- A stop token's text stays in the output; a stop string's does not (unless include_stop_str_in_output),
  and text that might be the start of a stop string is held back until it is known not to be.
- Logprobs describe the distribution after logit_bias and before temperature (vLLM's "processed"
  logprobs), so at temperature 0 the chosen token is always the top-1 alternative. Forced output (tool
  arguments, JSON) has one legal token per step: logprob 0, itself the only alternative.
- Stop strings and stop tokens do not apply inside a tool call's arguments.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import NamedTuple

from services.engine.backends.sim.forced_output import ForcedOutput
from services.engine.backends.sim.language_model import (
    CONTEXT_START,
    Distribution,
    PseudoLanguageModel,
    SamplingTable,
    extend_context,
    sampling_table,
)
from services.engine.backends.sim.plan import SamplingPlan
from services.engine.backends.sim.vocabulary import EOS_TOKEN_ID, TOKEN_BYTES, TOKEN_TEXTS, tokenize
from switchyard.engine.v1 import engine_service_pb2 as engine_pb2
from switchyard.inference.v1 import inference_pb2

_STOP = inference_pb2.FINISH_REASON_STOP
_LENGTH = inference_pb2.FINISH_REASON_LENGTH
_TOOL_CALLS = inference_pb2.FINISH_REASON_TOOL_CALLS

# Added to EOS's logit once a choice reached its natural length: EOS then wins at any sane temperature.
_EOS_BOOST = 30.0


class RequestSampler:
    """What the choices of one request share: the model, the sampling parameters, and per-row tables
    derived from them (built on first use; long outputs revisit rows)."""

    def __init__(self, model: PseudoLanguageModel, sampling: SamplingPlan) -> None:
        self.model = model
        self.sampling = sampling
        self.greedy = sampling.temperature == 0.0
        self.bias = {token: float(bias) for token, bias in sampling.logit_bias.items()}
        self._biased: dict[int, Distribution] = {}
        self._tables: dict[int, SamplingTable] = {}

    def distribution(self, context: int, extra_bias: dict[int, float] | None = None) -> Distribution:
        base = self.model.distribution(context)
        if extra_bias:
            bias = dict(self.bias)
            for token, delta in extra_bias.items():
                bias[token] = bias.get(token, 0.0) + delta
            return base.biased(bias)
        if not self.bias:
            return base
        key = self.model.row_key(context)
        biased = self._biased.get(key)
        if biased is None:
            biased = self._biased[key] = base.biased(self.bias)
        return biased

    def draw(self, context: int, distribution: Distribution, rng: random.Random, reusable: bool) -> int:
        """A token sampled from `distribution`. `reusable`: it is this row's usual distribution (no
        per-step bias), so its sampling table is kept for the next visit."""
        s = self.sampling
        if not reusable:
            return sampling_table(distribution, s.temperature, s.top_k, s.top_p, s.min_p).draw(rng)
        key = self.model.row_key(context)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = sampling_table(distribution, s.temperature, s.top_k, s.top_p, s.min_p)
        return table.draw(rng)


class EchoPrefix(NamedTuple):
    """The prompt as the first delta of every choice shows it (echo): text, and logprobs if asked."""

    text: str
    logprobs: Sequence[inference_pb2.TokenLogprob]


class ChoiceDecoder:
    """Generates one choice. Once `done` is true, `step` must not be called again."""

    def __init__(
        self,
        index: int,
        sampler: RequestSampler,
        context: int,
        rng: random.Random | None,
        natural_length: int,
        forced: ForcedOutput | None = None,
        tool_call_id: str = "",
        echo: EchoPrefix | None = None,
        track_logprob: bool = False,
    ) -> None:
        sampling = sampler.sampling
        self.index = index
        self.generated = 0
        self.token_ids: list[int] = []
        # Sum of the chosen tokens' logprobs; kept when track_logprob or logprobs (best_of ranks by it).
        self.cumulative_logprob = 0.0
        self.done = False
        self._sampler = sampler
        self._sampling = sampling
        self._context = context
        self._rng = rng
        self._eos_at = None if sampling.ignore_eos else max(natural_length, sampling.min_tokens)
        self._bans = {token: -math.inf for token in {EOS_TOKEN_ID, *sampling.stop_token_ids}}
        self._echo = echo
        self._logprobs = sampling.logprobs
        self._track_logprob = track_logprob or sampling.logprobs is not None
        self._fast_greedy = sampler.greedy and not sampler.bias and not self._track_logprob
        self._tool_call_id = tool_call_id
        self._tool_name = forced.tool_name if forced else None
        self._script: list[tuple[int, str]] | None = None
        if forced is not None:
            pieces = tokenize(forced.text)
            self._script = list(zip(pieces.token_ids, pieces.pieces, strict=True))
            if self._tool_name is not None:
                # A call's first token is its name (no text); the arguments follow.
                self._script.insert(0, (tokenize(self._tool_name).token_ids[0], ""))
        self._stop = sampling.stop
        self._hold_back = max(map(len, self._stop), default=1) - 1
        self._pending = ""  # text not emitted yet: it may be the start of a stop string

    def step(self) -> engine_pb2.GenerateResponse:
        response = engine_pb2.GenerateResponse()
        delta = response.delta
        delta.index = self.index
        out = ""
        if self._echo is not None:
            out = self._echo.text
            delta.logprobs.extend(self._echo.logprobs)
            self._echo = None
        if self.generated >= self._sampling.max_tokens:  # max_tokens 0: the echo alone
            return self._finish(response, out, _LENGTH)

        if self._script is None:
            token, text, logprob, distribution = self._sample()
        else:
            token, text = self._script[self.generated]
            logprob, distribution = 0.0, None
        self.generated += 1
        self.token_ids.append(token)
        delta.token_ids.append(token)
        if self._track_logprob:
            self.cumulative_logprob += logprob
        if self._logprobs is not None:
            self._add_logprob(delta, token, text, logprob, distribution)

        if self._tool_name is not None:
            call = delta.tool_calls.add(function_arguments=text)
            if self.generated == 1:
                call.id = self._tool_call_id
                call.function_name = self._tool_name
            if self.generated == len(self._script):
                return self._finish(response, out, _TOOL_CALLS)
        elif token == EOS_TOKEN_ID and self._eos_at is not None:
            return self._finish(response, out, _STOP)
        elif not self._stop:
            out += text
        else:
            written, stop = self._write_until_stop(text, match=self.generated >= self._sampling.min_tokens)
            out += written
            if stop is not None:
                return self._finish(response, out, _STOP, stop)

        if token in self._sampling.stop_token_ids and self._tool_name is None:
            return self._finish(response, out, _STOP)
        if self._script is not None and self.generated == len(self._script):
            return self._finish(response, out, _STOP)
        if self.generated == self._sampling.max_tokens:
            return self._finish(response, out, _LENGTH)
        if out:
            delta.text = out
        return response

    def _sample(self) -> tuple[int, str, float, Distribution | None]:
        sampler, context = self._sampler, self._context
        extra_bias = None
        if self.generated < self._sampling.min_tokens:
            extra_bias = self._bans
        elif self._eos_at is not None and self.generated >= self._eos_at:
            extra_bias = {EOS_TOKEN_ID: _EOS_BOOST}
        if self._fast_greedy and extra_bias is None:
            token, logprob, distribution = sampler.model.greedy(context), 0.0, None
        else:
            distribution = sampler.distribution(context, extra_bias)
            if sampler.greedy:
                token = distribution.greedy()
            else:
                token = sampler.draw(context, distribution, self._rng, reusable=extra_bias is None)
            logprob = distribution.logprob(token) if self._track_logprob else 0.0
        self._context = extend_context(context, token)
        return token, TOKEN_TEXTS[token], logprob, distribution

    def _write_until_stop(self, text: str, match: bool) -> tuple[str, str | None]:
        """Adds `text`; returns what can be emitted and the stop string that matched, if one did.

        Everything but the last (longest stop - 1) characters is emitted each step, so a stop string
        completed by new text can only start inside the pending text."""
        pending = self._pending + text
        if match:
            found_at, matched = len(pending), None
            for stop in self._stop:
                at = pending.find(stop)
                if at != -1 and at < found_at:
                    found_at, matched = at, stop
            if matched is not None:
                self._pending = ""
                end = found_at + len(matched) if self._sampling.include_stop_str_in_output else found_at
                return pending[:end], matched
        safe = len(pending) - self._hold_back
        if safe <= 0:
            self._pending = pending
            return "", None
        self._pending = pending[safe:]
        return pending[:safe], None

    def _finish(
        self, response: engine_pb2.GenerateResponse, out: str, reason: int, stop_reason: str = ""
    ) -> engine_pb2.GenerateResponse:
        delta = response.delta
        out += self._pending  # held back for a stop string that never came
        self._pending = ""
        if out:
            delta.text = out
        delta.finish_reason = reason
        if stop_reason:
            delta.stop_reason = stop_reason
        self.done = True
        return response

    def _add_logprob(
        self,
        delta: inference_pb2.TokenDelta,
        token: int,
        text: str,
        logprob: float,
        distribution: Distribution | None,
    ) -> None:
        entry = delta.logprobs.add(token=text, logprob=logprob, bytes=text.encode(), token_id=token)
        if not self._logprobs:
            return
        if distribution is None:  # forced output: the only legal token
            entry.top_logprobs.add(token=text, logprob=0.0, bytes=entry.bytes, token_id=token)
            return
        for alternative, alternative_logprob in distribution.top(self._logprobs):
            entry.top_logprobs.add(
                token=TOKEN_TEXTS[alternative],
                logprob=alternative_logprob,
                bytes=TOKEN_BYTES[alternative],
                token_id=alternative,
            )


def prompt_logprobs(
    model: PseudoLanguageModel, token_ids: Sequence[int], pieces: Sequence[str], top: int
) -> list[inference_pb2.TokenLogprob]:
    """The prompt's own logprobs under the model (for echo). The first token has no context: its
    logprob is unset and it has no alternatives."""
    entries = []
    context = CONTEXT_START
    for position, (token, piece) in enumerate(zip(token_ids, pieces, strict=True)):
        entry = inference_pb2.TokenLogprob(token=piece, bytes=piece.encode(), token_id=token)
        if position:
            distribution = model.distribution(context)
            entry.logprob = distribution.logprob(token)
            for alternative, logprob in distribution.top(top) if top else ():
                entry.top_logprobs.add(
                    token=TOKEN_TEXTS[alternative],
                    logprob=logprob,
                    bytes=TOKEN_BYTES[alternative],
                    token_id=alternative,
                )
        context = extend_context(context, token)
        entries.append(entry)
    return entries
