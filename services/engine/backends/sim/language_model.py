"""The simulator's "model": a fixed, seeded table of next-token distributions.

The context so far (prompt and output tokens) is folded into one integer hash; the hash picks a row of
the table. A row ranks `CANDIDATES_PER_ROW` tokens with their log probabilities; every other token
shares the remaining mass equally (the tail). So each step has a complete, normalised distribution over
the vocabulary at the cost of a hash and a lookup, and everything derived from it is consistent: the
greedy token is the top-1 alternative, logprobs sum to at most 1, a logit bias moves probability the
way it would in a real model.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from services.engine.backends.sim.vocabulary import FIRST_WORD_ID, TOKEN_TEXTS, VOCAB_SIZE, WORDS

CANDIDATES_PER_ROW = 20
_ROWS = 4099  # prime, so that the context hash spreads evenly over the rows
# Logits relative to the best candidate; the tail is well below every candidate.
_TAIL_LOGIT = -10.0
_HASH_MODULUS = (1 << 61) - 1  # a Mersenne prime
_HASH_MULTIPLIER = 1_000_003
CONTEXT_START = 0x5EED


def extend_context(context: int, token: int) -> int:
    """The context hash after one more token: the same tokens always give the same hash."""
    return (context * _HASH_MULTIPLIER + token + 1) % _HASH_MODULUS


def context_of(token_ids: Iterable[int]) -> int:
    context = CONTEXT_START
    for token in token_ids:
        context = extend_context(context, token)
    return context


@dataclass(frozen=True, slots=True)
class Distribution:
    """A next-token distribution: ranked candidates (best first) and a tail of equally likely tokens.

    `excluded` are the tokens outside the tail (the candidates and any banned token); the tail holds
    the other `tail_size` tokens, each with `tail_logprob`.
    """

    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]
    tail_logprob: float
    tail_size: int
    excluded: frozenset[int]

    def logprob(self, token: int) -> float:
        try:
            return self.logprobs[self.tokens.index(token)]
        except ValueError:
            return -math.inf if token in self.excluded else self.tail_logprob

    def greedy(self) -> int:
        return self.top(1)[0][0]

    def top(self, k: int) -> list[tuple[int, float]]:
        """The k most likely tokens, best first; ties in the tail go to the lowest id."""
        tokens, logprobs, tail = self.tokens, self.logprobs, self.tail_logprob
        if k <= len(tokens) and logprobs[k - 1] >= tail:
            return list(zip(tokens[:k], logprobs[:k], strict=True))
        tail_ids = (t for t in range(VOCAB_SIZE) if t not in self.excluded)
        out: list[tuple[int, float]] = []
        i = 0
        while len(out) < k:
            if i < len(tokens) and logprobs[i] >= tail:
                out.append((tokens[i], logprobs[i]))
                i += 1
                continue
            tail_token = next(tail_ids, None)
            if tail_token is not None:
                out.append((tail_token, tail))
            elif i < len(tokens):
                out.append((tokens[i], logprobs[i]))
                i += 1
            else:
                break
        return out

    def biased(self, bias: Mapping[int, float]) -> Distribution:
        """This distribution with logit biases added (-inf bans a token), renormalised."""
        weights = dict(zip(self.tokens, map(math.exp, self.logprobs), strict=True))
        excluded = set(self.excluded)
        tail_weight = math.exp(self.tail_logprob)
        tail_size = self.tail_size
        total = 1.0
        for token, delta in bias.items():
            if token in weights:
                old = weights[token]
            elif token in excluded:
                continue  # already banned
            else:
                old = tail_weight
                tail_size -= 1
                excluded.add(token)
            new = 0.0 if delta == -math.inf else old * math.exp(delta)
            total += new - old
            if new > 0.0:
                weights[token] = new
            else:
                weights.pop(token, None)
        log_total = math.log(total)
        ranked = sorted(weights.items(), key=lambda item: -item[1])
        return Distribution(
            tokens=tuple(token for token, _ in ranked),
            logprobs=tuple(math.log(weight) - log_total for _, weight in ranked),
            tail_logprob=self.tail_logprob - log_total,
            tail_size=tail_size,
            excluded=frozenset(excluded),
        )


@dataclass(frozen=True, slots=True)
class SamplingTable:
    """What a sampler draws from: kept candidates with cumulative probabilities, then maybe the tail."""

    tokens: tuple[int, ...]
    cumulative: tuple[float, ...]  # one per kept token, then 1.0 for the tail bucket when kept
    distribution: Distribution

    def draw(self, rng: random.Random) -> int:
        index = bisect_right(self.cumulative, rng.random() * self.cumulative[-1])
        if index < len(self.tokens):
            return self.tokens[index]
        if index == len(self.tokens) and len(self.cumulative) > len(self.tokens):
            excluded = self.distribution.excluded
            while True:
                token = rng.randrange(VOCAB_SIZE)
                if token not in excluded:
                    return token
        return self.tokens[-1]  # rounding at the very top of the range


def sampling_table(
    distribution: Distribution, temperature: float, top_k: int, top_p: float, min_p: float
) -> SamplingTable:
    """The distribution reshaped by temperature, then cut by top_k, min_p and top_p.

    The tail counts as one bucket after the candidates; top_k keeps it only when k reaches past the
    ranked candidates (the simulator does not rank tail tokens among themselves).
    """
    scaled = [lp / temperature for lp in distribution.logprobs]
    tail_scaled = distribution.tail_logprob / temperature
    peak = max([*scaled, tail_scaled]) if distribution.tail_size else max(scaled)
    weights = [math.exp(s - peak) for s in scaled]
    tail_each = math.exp(tail_scaled - peak) if distribution.tail_size else 0.0
    keep = len(weights)
    keep_tail = tail_each > 0.0
    if top_k > 0:
        keep = min(keep, top_k)
        keep_tail = keep_tail and top_k > len(weights)
    if min_p > 0.0:
        best = max([*weights[:keep], tail_each if keep_tail else 0.0])
        while keep > 1 and weights[keep - 1] < min_p * best:
            keep -= 1
        keep_tail = keep_tail and tail_each >= min_p * best
    tail_weight = tail_each * distribution.tail_size if keep_tail else 0.0
    total = sum(weights[:keep]) + tail_weight
    if top_p < 1.0:
        running = 0.0
        for i in range(keep):
            running += weights[i]
            if running >= top_p * total:
                keep, keep_tail, tail_weight = i + 1, False, 0.0
                break
    cumulative: list[float] = []
    running = 0.0
    for weight in weights[:keep]:
        running += weight
        cumulative.append(running)
    if keep_tail:
        cumulative.append(running + tail_weight)
    if not cumulative:  # everything was banned or cut: fall back to the tail alone
        cumulative.append(1.0)
    return SamplingTable(distribution.tokens[:keep], tuple(cumulative), distribution)


class PseudoLanguageModel:
    """The table of rows; one instance per seed is shared by every simulated engine in the process."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        generated = _generation_pool()
        population = [token for token, _ in generated]
        cum_weights = list(itertools.accumulate(weight for _, weight in generated))
        self._rows: list[Distribution] = []
        for _ in range(_ROWS):
            candidates: dict[int, None] = {}
            while len(candidates) < CANDIDATES_PER_ROW:
                candidates.setdefault(rng.choices(population, cum_weights=cum_weights)[0], None)
            logits, logit = [], 0.0
            for _ in candidates:
                logits.append(logit)
                logit -= rng.expovariate(2.5)
            tail_size = VOCAB_SIZE - len(candidates)
            log_total = math.log(sum(map(math.exp, logits)) + tail_size * math.exp(_TAIL_LOGIT))
            self._rows.append(
                Distribution(
                    tokens=tuple(candidates),
                    logprobs=tuple(lg - log_total for lg in logits),
                    tail_logprob=_TAIL_LOGIT - log_total,
                    tail_size=tail_size,
                    excluded=frozenset(candidates),
                )
            )
        # The hot path of greedy decoding without logprobs needs only this.
        self.greedy_tokens: tuple[int, ...] = tuple(row.tokens[0] for row in self._rows)

    def distribution(self, context: int) -> Distribution:
        return self._rows[context % _ROWS]

    def greedy(self, context: int) -> int:
        return self.greedy_tokens[context % _ROWS]

    @staticmethod
    def row_key(context: int) -> int:
        """Contexts with the same key share a distribution (for per-request caches of derived tables)."""
        return context % _ROWS


@functools.cache
def language_model(seed: int) -> PseudoLanguageModel:
    """Built once per seed (about 0.1 s) and shared."""
    return PseudoLanguageModel(seed)


def _generation_pool() -> list[tuple[int, float]]:
    """The tokens the simulator writes, with Zipf-like weights: common words, commas and full stops
    often, paragraph breaks now and then."""
    pool = [(FIRST_WORD_ID + rank, 1.0 / (rank + 8)) for rank in range(len(WORDS))]
    pool += [(TOKEN_TEXTS.index("."), 0.08), (TOKEN_TEXTS.index(","), 0.1), (TOKEN_TEXTS.index("\n"), 0.01)]
    return pool
