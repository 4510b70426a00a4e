"""The simulator's tokenizer and pseudo-model as plain functions."""

from __future__ import annotations

import math
import random

import pytest

from services.engine.backends.sim.language_model import (
    CANDIDATES_PER_ROW,
    context_of,
    language_model,
    sampling_table,
)
from services.engine.backends.sim.vocabulary import (
    EOS_TOKEN_ID,
    TOKEN_TEXTS,
    VOCAB_SIZE,
    detokenize,
    tokenize,
)

MODEL = language_model(0)


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world!",
        "  leading and trailing  ",
        "line one\n\nline two",
        "naïve café ünïcode",
        "a{b}[c](d)",
        "",
    ],
)
def test_tokenize_pieces_join_back_to_the_text(text):
    tokenized = tokenize(text)
    assert "".join(tokenized.pieces) == text
    assert len(tokenized.token_ids) == len(tokenized.pieces)
    assert all(0 < token < VOCAB_SIZE for token in tokenized.token_ids)


def test_known_words_get_their_vocabulary_id_whatever_the_spacing_or_case():
    (river,) = tokenize(" river").token_ids
    assert TOKEN_TEXTS[river] == " river"
    assert tokenize("River").token_ids == tokenize("\n river").token_ids == (river,)
    assert tokenize("zyzzyva").token_ids == tokenize("zyzzyva").token_ids, "unknown words map stably"


def test_detokenize_gives_the_vocabulary_texts():
    ids = tokenize("the river and the stone").token_ids
    assert "".join(detokenize(ids).pieces) == " the river and the stone"


def test_every_distribution_is_normalised_over_the_vocabulary():
    for context in range(0, 50_000, 997):
        distribution = MODEL.distribution(context)
        assert len(distribution.tokens) == CANDIDATES_PER_ROW
        assert EOS_TOKEN_ID not in distribution.tokens
        total = sum(map(math.exp, distribution.logprobs)) + distribution.tail_size * math.exp(
            distribution.tail_logprob
        )
        assert total == pytest.approx(1.0)
        assert list(distribution.logprobs) == sorted(distribution.logprobs, reverse=True)
        assert distribution.greedy() == MODEL.greedy(context) == distribution.tokens[0]


def test_the_context_hash_depends_on_every_token_in_order():
    assert context_of([1, 2, 3]) == context_of([1, 2, 3])
    assert (
        len({context_of([1, 2, 3]), context_of([3, 2, 1]), context_of([1, 2]), context_of([1, 2, 3, 3])}) == 4
    )


def test_bias_forces_bans_and_renormalises():
    distribution = MODEL.distribution(context_of([5, 6, 7]))
    tail_token = next(token for token in range(1, VOCAB_SIZE) if token not in distribution.excluded)
    forced = distribution.biased({tail_token: 100.0})
    assert forced.greedy() == tail_token
    assert forced.logprob(tail_token) == pytest.approx(0.0, abs=1e-6)

    top = distribution.tokens[0]
    banned = distribution.biased({top: -math.inf})
    assert banned.logprob(top) == -math.inf
    assert banned.greedy() == distribution.tokens[1]
    total = sum(map(math.exp, banned.logprobs)) + banned.tail_size * math.exp(banned.tail_logprob)
    assert total == pytest.approx(1.0)
    rng = random.Random(0)
    table = sampling_table(banned, 2.0, 0, 1.0, 0.0)
    assert top not in {table.draw(rng) for _ in range(2000)}


def test_top_alternatives_reach_into_the_tail_when_the_candidates_run_out():
    distribution = MODEL.distribution(context_of([9]))
    alternatives = distribution.top(CANDIDATES_PER_ROW + 3)
    assert len({token for token, _ in alternatives}) == CANDIDATES_PER_ROW + 3
    assert [lp for _, lp in alternatives[-3:]] == [distribution.tail_logprob] * 3
    assert [lp for _, lp in alternatives] == sorted((lp for _, lp in alternatives), reverse=True)


@pytest.mark.parametrize(
    ("top_k", "top_p", "min_p", "allowed"),
    [
        (1, 1.0, 0.0, 1),  # top_k 1 is greedy
        (3, 1.0, 0.0, 3),
        (0, 1e-6, 0.0, 1),  # a tiny top_p keeps the best token only
        (0, 1.0, 0.999, 1),  # so does a min_p near 1
    ],
)
def test_top_k_top_p_and_min_p_cut_the_candidates(top_k, top_p, min_p, allowed):
    distribution = MODEL.distribution(context_of([42]))
    table = sampling_table(distribution, 1.0, top_k, top_p, min_p)
    rng = random.Random(1)
    drawn = {table.draw(rng) for _ in range(3000)}
    assert drawn <= set(distribution.tokens[:allowed])
    assert len(drawn) == allowed


def test_temperature_spreads_the_draws():
    distribution = MODEL.distribution(context_of([7]))
    rng = random.Random(2)

    def share_of_best(temperature: float) -> float:
        table = sampling_table(distribution, temperature, 0, 1.0, 0.0)
        return sum(table.draw(rng) == distribution.tokens[0] for _ in range(4000)) / 4000

    cold, warm = share_of_best(0.3), share_of_best(1.5)
    assert cold > warm
    assert share_of_best(1.0) == pytest.approx(math.exp(distribution.logprobs[0]), abs=0.05)
