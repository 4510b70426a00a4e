"""Request scoring: a difficulty in [0, 1] and a category, from features the router sees cheaply.

`HeuristicScorer` is explainable by construction: the difficulty is a sum of named contributions
(kept in `Score.contributions`), clamped to [0, 1]:

    category base      code 0.45, math 0.5, reasoning 0.45, creative 0.3, extraction 0.25,
                       questions 0.2, chat 0.1
    prompt size        up to +0.2, logarithmic in the estimated prompt tokens (10,000 tokens = 0.2)
    conversation depth up to +0.1 at 11 or more messages
    structure          +0.1 when tools may be called, +0.05 for a JSON schema to follow
    output length      up to +0.15, linear in max_tokens x n up to 2,048 tokens
    signal strength    +0.05 per extra signal of the category, up to +0.15

The category is the one with the most signals in the instructions and the last user message (ties go
to the earlier one in `CATEGORY_PRIORITY`); "chat" when nothing matches. Anything implementing
`Scorer` (e.g. a learned classifier over the same features) can replace it.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass
from typing import Protocol

from services.router.features import RequestFeatures

CATEGORY_PRIORITY = ("code", "math", "reasoning", "extraction", "creative", "questions", "chat")

CATEGORY_BASE = {
    "code": 0.45,
    "math": 0.5,
    "reasoning": 0.45,
    "creative": 0.3,
    "extraction": 0.25,
    "questions": 0.2,
    "chat": 0.1,
}

# Punctuation becomes space before the text is split into words ("python," -> "python"); + and #
# stay, for c++ and c#.
_PUNCTUATION_TO_SPACE = str.maketrans({c: " " for c in string.punctuation if c not in "+#"})


@dataclass(frozen=True, slots=True)
class _Signals:
    """A category's signals; each kind that matches counts once. Words are looked up in the set of the
    lower-cased text's words, phrases and symbols found as substrings: case-insensitive regex
    alternations cost hundreds of microseconds on a long prompt, these a few."""

    words: frozenset[str] = frozenset()
    syntax_words: frozenset[str] = frozenset()
    phrases: tuple[str, ...] = ()
    symbols: tuple[str, ...] = ()
    patterns: tuple[re.Pattern[str], ...] = ()

    def count(self, raw: str, lowered: str, words: set[str]) -> int:
        hits = (not self.words.isdisjoint(words)) + (not self.syntax_words.isdisjoint(words))
        hits += any(map(lowered.__contains__, self.phrases)) + any(map(raw.__contains__, self.symbols))
        return hits + sum(1 for pattern in self.patterns if pattern.search(raw))


_SIGNALS: dict[str, _Signals] = {
    "code": _Signals(
        words=frozenset(
            "code coding python javascript typescript java rust golang c++ c# sql regex function bug "
            "compile compiler refactor stacktrace exception api script debug".split()
        ),
        syntax_words=frozenset("def class return import const let var fn func struct impl include".split()),
        phrases=("```", "stack trace", "unit test"),
        symbols=("=>", "();", "() {", "():", "->"),
        patterns=(re.compile(r"[;{}][ \t]*$", re.MULTILINE),),
    ),
    "math": _Signals(
        words=frozenset(
            "solve equation integral derivative prove proof theorem lemma probability calculate compute "
            "algebra geometry matrix eigenvalue eigenvalues polynomial factorial prime".split()
        ),
        patterns=(
            re.compile(r"\d\s*[-+*/^=<>]\s*\d"),
            re.compile(r"\\(?:frac|int|sum|sqrt|lim)\b|\$[^$\n]+\$"),
        ),
    ),
    "reasoning": _Signals(
        words=frozenset(
            "why explain analyze analyse compare evaluate reason reasoning tradeoff tradeoffs implications "
            "strategy plan argue critique justify".split()
        ),
        phrases=(
            "step by step",
            "step-by-step",
            "think through",
            "think it through",
            "pros and cons",
            "trade-off",
        ),
    ),
    "creative": _Signals(
        words=frozenset(
            "poem story stories song lyrics haiku limerick fiction novel screenplay slogan imagine "
            "creative".split()
        ),
        phrases=("write a poem", "write a story", "write me a", "fairy tale", "short story"),
    ),
    "extraction": _Signals(
        words=frozenset(
            "extract summarize summarise summary tldr parse classify categorize categorise label".split()
        ),
        phrases=("list all", "fill in", "as json", "in json", "tl;dr"),
    ),
}


@dataclass(frozen=True, slots=True)
class Score:
    difficulty: float
    category: str
    # (name, amount) pairs whose sum, clamped to [0, 1], is the difficulty.
    contributions: tuple[tuple[str, float], ...] = ()


class Scorer(Protocol):
    """Scores one request. Must be cheap (it runs on every request, before any engine work)."""

    def score(self, features: RequestFeatures) -> Score: ...


# Judged on the user's own words only: a system prompt ending in "?" says nothing about the request.
_QUESTION_PATTERNS = (
    re.compile(r"\?\s*$"),
    re.compile(r"^\s*(?:[Ww]ho|[Ww]hat|[Ww]hen|[Ww]here|[Ww]hich|[Hh]ow)\b"),
)


def _signal_counts(text: str) -> dict[str, int]:
    lowered = text.lower()
    words = set(lowered.translate(_PUNCTUATION_TO_SPACE).split())
    return {category: signals.count(text, lowered, words) for category, signals in _SIGNALS.items()}


class HeuristicScorer:
    """The documented heuristic (see the module docstring)."""

    def score(self, features: RequestFeatures) -> Score:
        text = (
            f"{features.instructions}\n{features.last_user_text}"
            if features.instructions
            else features.last_user_text
        )
        counts = _signal_counts(text)
        counts["questions"] = sum(
            1 for pattern in _QUESTION_PATTERNS if pattern.search(features.last_user_text)
        )
        if features.wants_json:
            counts["extraction"] += 1
        category, signals = "chat", 0
        for name in CATEGORY_PRIORITY[:-1]:
            if counts[name] > signals:
                category, signals = name, counts[name]

        contributions = [(f"category:{category}", CATEGORY_BASE[category])]
        if features.prompt_tokens:
            contributions.append(
                ("prompt_size", round(0.2 * min(1.0, math.log10(1 + features.prompt_tokens) / 4), 4))
            )
        if features.turns > 1:
            contributions.append(("conversation_depth", round(0.1 * min(1.0, (features.turns - 1) / 10), 4)))
        if features.wants_tools:
            contributions.append(("tools", 0.1))
        if features.wants_json_schema:
            contributions.append(("json_schema", 0.05))
        requested = features.output_tokens_requested
        if requested:
            contributions.append(("output_length", round(0.15 * min(1.0, requested / 2048), 4)))
        if signals > 1:
            contributions.append(("signal_strength", 0.05 * min(3, signals - 1)))
        difficulty = min(1.0, max(0.0, sum(amount for _, amount in contributions)))
        return Score(difficulty=round(difficulty, 4), category=category, contributions=tuple(contributions))
