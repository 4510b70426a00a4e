"""Request scoring: the category a request falls in and how difficult it is, from cheap features."""

from __future__ import annotations

import pytest

from services.router.features import extract_features
from services.router.scoring import HeuristicScorer, Score
from tests.router.requests import chat_input, prompt_input

SCORER = HeuristicScorer()


def score(generation) -> Score:
    return SCORER.score(extract_features(generation, chars_per_token=4.0))


@pytest.mark.parametrize(
    ("generation", "category"),
    [
        (chat_input(("user", "hi there, how's your day going")), "chat"),
        (chat_input(("user", "What is the capital of France?")), "questions"),
        (
            chat_input(
                ("system", "You are a helpful coding assistant."),
                ("user", "Write a Python function to calculate Fibonacci numbers."),
            ),
            "code",
        ),
        (chat_input(("user", "Fix this:\n```\nfor (i = 0; i < n; i++) {\n  total += i;\n}\n```")), "code"),
        (chat_input(("user", "Solve the equation 3x + 5 = 20 and prove the solution is unique.")), "math"),
        (chat_input(("user", "Explain step by step why the sky is blue.")), "reasoning"),
        (prompt_input("Write a poem about coding in the rain"), "creative"),
        (
            chat_input(
                ("user", "Extract every name and date from: John met Mary on 3 May."), json_schema=True
            ),
            "extraction",
        ),
    ],
)
def test_category(generation, category):
    assert score(generation).category == category


def test_a_system_prompt_question_mark_does_not_make_a_question():
    generation = chat_input(("system", "Can you help?"), ("user", "tell me about your weekend"))
    assert score(generation).category == "chat"


def test_difficulty_rises_with_what_the_request_asks_for():
    greeting = score(chat_input(("user", "hi")))
    question = score(chat_input(("user", "What is the capital of France?")))
    code = score(chat_input(("user", "Write a Python function that parses ISO dates.")))
    big_code = score(
        chat_input(
            ("user", "Refactor this module:\n```python\n" + "def f(x):\n    return x + 1\n" * 400 + "```"),
            max_tokens=2048,
        )
    )
    assert greeting.difficulty < question.difficulty < code.difficulty < big_code.difficulty
    assert 0.0 <= greeting.difficulty and big_code.difficulty <= 1.0


@pytest.mark.parametrize(
    ("harder", "contribution"),
    [
        ({"tools": ["get_weather"]}, "tools"),
        ({"json_schema": True}, "json_schema"),
        ({"max_tokens": 1500}, "output_length"),
    ],
)
def test_tools_json_and_long_outputs_make_a_request_harder(harder, contribution):
    plain = score(chat_input(("user", "Weather in Oslo tomorrow, please")))
    asked = score(chat_input(("user", "Weather in Oslo tomorrow, please"), **harder))
    assert asked.difficulty > plain.difficulty
    assert contribution in dict(asked.contributions)


def test_a_long_conversation_is_harder_than_its_last_turn_alone():
    turns = [("user", "Let's plan a trip."), ("assistant", "Sure, where to?")] * 6 + [
        ("user", "What about Rome?")
    ]
    assert score(chat_input(*turns)).difficulty > score(chat_input(turns[-1])).difficulty


def test_difficulty_is_the_clamped_sum_of_its_named_contributions():
    result = score(
        chat_input(("user", "Prove that there are infinitely many primes, step by step."), max_tokens=800)
    )
    assert result.difficulty == pytest.approx(
        min(1.0, sum(amount for _, amount in result.contributions)), abs=1e-3
    )
    assert dict(result.contributions)["category:math"] == 0.5
    code = "```python\ndef f(): return 1;\n```\n" * 300
    huge = score(chat_input(*[("user", code)] * 12, tools=["run"], json_schema=True, max_tokens=4096))
    assert sum(amount for _, amount in huge.contributions) > 1.0
    assert huge.difficulty == 1.0
