"""Routing experiments on four simulated engines, in one process, on loopback.

    .venv/bin/python -m bench.routing [--conversations 48] [--turns 6] [--concurrency 16]

1. Prefix affinity. Multi-turn chats that share a few long system prompts, against 4 sim engines
   that model a prefix cache: prefill time per uncached prompt token (one prefill at a time per
   engine, as on one accelerator) and an LRU block cache of limited capacity. The same workload runs
   under each replica policy, on fresh engines each time: prefix_affinity, round_robin, least_loaded.
   Reported: prefix-cache hit rate (cached / prompt tokens), mean and p99 time to first token,
   requests/s, and ratios against round_robin.
2. Cost by preference. A mixed workload (greetings, questions, code, math, reasoning, creative
   writing, extraction; short and long) over a three-model registry, routed with powerful, balanced
   and efficient; credits spent (from the request breakdown), the ratio against powerful and the
   model mix. All three models are served by the same sim engines, so every request produces the
   same tokens whatever the choice: the difference is the price alone (the sim models no quality).
3. Routing decision cost: scoring, model choice and replica choice, in-process, for the requests of
   1 and 2: p50 / p99 / max microseconds.
4. Per-delta forwarding: the router's one-byte tag rewrite against parse + copy + serialise.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import random
import shutil
import statistics
import tempfile
import time
import timeit
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from services.engine.server import EngineServer
from services.engine.settings import EngineSettings
from services.router.decision import decide
from services.router.dispatch import ENGINE_DELTA_TAG, ROUTER_DELTA_PREFIX
from services.router.registry import parse_registry
from services.router.replicas import ReplicaChooser, ReplicaPool
from services.router.scoring import HeuristicScorer
from services.router.server import RouterServer
from services.router.settings import ReplicaSettings, RouterSettings, SelectionSettings
from switchyard.engine.v1 import engine_service_pb2 as engine_pb2
from switchyard.inference.v1 import inference_pb2
from switchyard.router.v1 import router_service_pb2 as router_pb2
from switchyard.router.v1 import router_service_pb2_grpc as router_grpc

RESULTS = Path(__file__).parent / "results"
# Registry files of the clusters this run starts (removed at exit).
WORKDIR = Path(tempfile.mkdtemp(prefix="switchyard-bench-routing-"))
ENGINES = 4
SERVED = "bench/sim"
POLICIES = ("prefix_affinity", "round_robin", "least_loaded")
PREFERENCES = {
    "powerful": router_pb2.ROUTER_PREFERENCE_POWERFUL,
    "balanced": router_pb2.ROUTER_PREFERENCE_BALANCED,
    "efficient": router_pb2.ROUTER_PREFERENCE_EFFICIENT,
}
# The cache experiment's engines: ~0.3 ms of prefill per uncached prompt token, 2 ms per output token,
# 16-token blocks and room for 160 of them per engine.
CACHE_SIM = {
    "prefill_time_per_token": 0.0003,
    "inter_token_latency": 0.002,
    "block_size": 16,
    "cache_capacity_blocks": 160,
}
WORDS = (
    "order shipment invoice refund account password delivery warranty battery screen keyboard "
    "charger tracking address payment subscription upgrade discount coupon return exchange support "
    "ticket status weekend morning evening city station bicycle garden kitchen window coffee river "
    "mountain library market concert museum festival harbour bridge tunnel forest meadow valley"
).split()


def registry_text(models: list[dict], addresses: list[str]) -> str:
    lines = ["models:"]
    for model in models:
        lines += [
            f"  - id: {model['id']}",
            f"    provider: {model['provider']}",
            f"    quality: {model['quality']}",
            f"    input_price: {model['input_price']}",
            f"    output_price: {model['output_price']}",
            "    context_window: 32768",
            f"    engine_model: {SERVED}",
            "    capabilities: {tools: true, json_schema: true, vision: false, max_logprobs: 20}",
            f"    replicas: [{', '.join(addresses)}]",
        ]
    return "\n".join(lines) + "\n"


ONE_MODEL = [
    {"id": "bench/chat", "provider": "bench", "quality": 0.6, "input_price": 1.0, "output_price": 2.0}
]
THREE_MODELS = [
    {"id": "bench/small", "provider": "acme", "quality": 0.4, "input_price": 0.1, "output_price": 0.2},
    {"id": "bench/medium", "provider": "acme", "quality": 0.65, "input_price": 0.6, "output_price": 1.2},
    {"id": "bench/large", "provider": "globex", "quality": 0.9, "input_price": 3.0, "output_price": 6.0},
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Cluster:
    """Four sim engines and a router over them, all in this process."""

    def __init__(self, engines: list[EngineServer], router: RouterServer, registry: Path) -> None:
        self.engines, self.router, self.registry = engines, router, registry
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{router.port}")
        self.stub = router_grpc.RouterServiceStub(self.channel)

    @classmethod
    async def start(cls, sim: dict, models: list[dict], policy: str) -> Cluster:
        engines = [
            EngineServer(EngineSettings(port=0, served_model_name=SERVED, sim=sim)) for _ in range(ENGINES)
        ]
        for engine in engines:
            await engine.start()
        registry = WORKDIR / f"models-{policy}-{len(models)}.yaml"
        text = registry_text(models, [f"127.0.0.1:{engine.port}" for engine in engines])
        await asyncio.to_thread(registry.write_text, text)
        settings = RouterSettings(
            port=0,
            registry_path=registry,
            registry_poll_interval=0,
            reveal_model_names=True,
            replicas={"policy": policy, "load_poll_interval": 0.05},
        )
        router = RouterServer(settings)
        await router.start()
        return cls(engines, router, registry)

    async def close(self) -> None:
        await self.channel.close()
        await self.router.stop(0)
        for engine in self.engines:
            await engine.stop(0)

    async def generate(
        self, request: router_pb2.GenerateRequest
    ) -> tuple[float, str, router_pb2.GenerateFinished]:
        """Time to first token (s), the text of choice 0, and the finished event."""
        started, first, texts, finished = time.perf_counter(), None, [], None
        async for event in self.stub.Generate(request):
            if event.HasField("delta"):
                if first is None:
                    first = time.perf_counter()
                texts.append(event.delta.text)
            elif event.HasField("finished"):
                finished = event.finished
        return (first or time.perf_counter()) - started, "".join(texts), finished


def chat_request(messages: list[tuple[str, str]], max_tokens: int, **fields) -> router_pb2.GenerateRequest:
    chat = inference_pb2.Chat(messages=[inference_pb2.ChatMessage(role=r, content=c) for r, c in messages])
    sampling = inference_pb2.SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    return router_pb2.GenerateRequest(
        input=inference_pb2.GenerationInput(chat=chat, sampling=sampling), **fields
    )


# -- 1. prefix affinity ------------------------------------------------------------------------------


@dataclass
class PolicyResult:
    policy: str
    requests: int
    cache_hit_rate: float
    ttft_mean_ms: float
    ttft_p99_ms: float
    requests_per_s: float
    tokens_per_s: float


def conversations(count: int, turns: int, seed: int = 7) -> list[tuple[str, list[str]]]:
    """(system prompt, user turns) per conversation; four system prompts of ~300 words shared by all."""
    rng = random.Random(seed)
    systems = [
        f"You are assistant number {n} of the Switchyard store. " + " ".join(rng.choices(WORDS, k=300))
        for n in range(4)
    ]
    return [
        (
            systems[c % len(systems)],
            [f"Customer {c}, question {t}: " + " ".join(rng.choices(WORDS, k=60)) for t in range(turns)],
        )
        for c in range(count)
    ]


async def run_policy(policy: str, workload, concurrency: int, reply_tokens: int) -> PolicyResult:
    cluster = await Cluster.start(CACHE_SIM, ONE_MODEL, policy)
    queue: asyncio.Queue = asyncio.Queue()
    for conversation in workload:
        queue.put_nowait(conversation)
    ttfts: list[float] = []
    prompt_tokens = cached_tokens = completion_tokens = 0

    async def worker() -> None:
        nonlocal prompt_tokens, cached_tokens, completion_tokens
        while not queue.empty():
            system, user_turns = queue.get_nowait()
            messages = [("system", system)]
            for turn in user_turns:
                messages.append(("user", turn))
                ttft, text, finished = await cluster.generate(chat_request(messages, reply_tokens))
                messages.append(("assistant", text))
                ttfts.append(ttft)
                prompt_tokens += finished.usage.prompt_tokens
                cached_tokens += finished.usage.cached_tokens
                completion_tokens += finished.usage.completion_tokens

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        elapsed = time.perf_counter() - started
        await cluster.close()
    return PolicyResult(
        policy=policy,
        requests=len(ttfts),
        cache_hit_rate=cached_tokens / prompt_tokens,
        ttft_mean_ms=statistics.fmean(ttfts) * 1000,
        ttft_p99_ms=percentile(ttfts, 99) * 1000,
        requests_per_s=len(ttfts) / elapsed,
        tokens_per_s=completion_tokens / elapsed,
    )


# -- 2. cost by preference ---------------------------------------------------------------------------


def mixed_workload(count: int, seed: int = 11) -> list[router_pb2.GenerateRequest]:
    rng = random.Random(seed)
    code_lines = "\n".join(f"def step_{i}(x):\n    return x * {i} + {i % 7}" for i in range(120))
    makers = [
        lambda: ([("user", rng.choice(["hi!", "thanks, that helped", "good morning"]))], 24),
        lambda: ([("user", f"What is the capital of {rng.choice(['Peru', 'Kenya', 'Norway'])}?")], 48),
        lambda: ([("user", "Write a Python function that merges two sorted lists without duplicates.")], 256),
        lambda: ([("user", f"Refactor this module and add unit tests:\n```python\n{code_lines}\n```")], 512),
        lambda: (
            [("user", f"Solve {rng.randint(2, 9)}x + {rng.randint(1, 20)} = 50 and prove it is unique.")],
            192,
        ),
        lambda: (
            [("user", "Explain step by step why interest rates affect bond prices, and compare options.")],
            384,
        ),
        lambda: ([("user", f"Write a poem about the {rng.choice(WORDS)} at dawn.")], 160),
        lambda: ([("user", "Summarize: " + " ".join(rng.choices(WORDS, k=400)))], 96),
        lambda: (
            [("user", " ".join(rng.choices(WORDS, k=12))), ("assistant", "Sure."), ("user", "And then?")],
            64,
        ),
    ]
    return [chat_request(*rng.choice(makers)(), request_breakdown=True) for _ in range(count)]


@dataclass
class PreferenceResult:
    preference: str
    requests: int
    credits: float
    credits_vs_powerful: float
    model_mix: dict[str, int]


async def spend(cluster: Cluster, requests: list[router_pb2.GenerateRequest], concurrency: int):
    """Runs `requests`; the credits they cost and how many each model served."""
    queue: asyncio.Queue = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    credits, mix = 0.0, Counter()

    async def worker() -> None:
        nonlocal credits
        while not queue.empty():
            _, _, finished = await cluster.generate(queue.get_nowait())
            credits += finished.breakdown.cost
            mix[finished.breakdown.model] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return credits, mix


async def run_preferences(
    workload: list[router_pb2.GenerateRequest], concurrency: int
) -> list[PreferenceResult]:
    cluster = await Cluster.start({}, THREE_MODELS, "least_loaded")
    results: dict[str, tuple[float, Counter]] = {}
    try:
        for name, preference in PREFERENCES.items():
            requests = []
            for request in workload:
                routed = router_pb2.GenerateRequest()
                routed.CopyFrom(request)
                routed.routing.preference = preference
                requests.append(routed)
            results[name] = await spend(cluster, requests, concurrency)
    finally:
        await cluster.close()
    baseline = results["powerful"][0]
    return [
        PreferenceResult(name, len(workload), credits, credits / baseline, dict(sorted(mix.items())))
        for name, (credits, mix) in results.items()
    ]


# -- 3. routing decision cost ------------------------------------------------------------------------


@dataclass
class DecisionCost:
    decisions: int
    # Wall-clock time, and the CPU time of the deciding thread (what routing itself costs, without
    # the preemptions of a machine shared with other work).
    wall_p50_us: float
    wall_p99_us: float
    cpu_p50_us: float
    cpu_p99_us: float
    cpu_max_us: float


async def decision_cost(requests: list[router_pb2.GenerateRequest], rounds: int) -> DecisionCost:
    addresses = [f"10.0.0.{i}:50061" for i in range(ENGINES)]
    registry = parse_registry(registry_text(THREE_MODELS, addresses), environ={})
    pool = ReplicaPool(ReplicaSettings())
    pool.sync(addresses)  # channels are made but never connect: choice reads only local state
    chooser = ReplicaChooser(pool, ReplicaSettings())
    scorer, selection = HeuristicScorer(), SelectionSettings()
    wall: list[float] = []
    cpu: list[float] = []
    gc.collect()
    try:
        for _ in range(rounds):
            for request in requests:
                started, started_cpu = time.perf_counter_ns(), time.thread_time_ns()
                decision = decide(registry, request, scorer, selection)
                chooser.choose(
                    decision.selection.plan[0], decision.features, customer=request.customer_identifier
                )
                cpu.append((time.thread_time_ns() - started_cpu) / 1000)
                wall.append((time.perf_counter_ns() - started) / 1000)
    finally:
        await pool.close()
    return DecisionCost(
        len(wall),
        percentile(wall, 50),
        percentile(wall, 99),
        percentile(cpu, 50),
        percentile(cpu, 99),
        max(cpu),
    )


# -- 4. per-delta forwarding -------------------------------------------------------------------------


def forwarding_cost() -> dict[str, float]:
    raw = engine_pb2.GenerateResponse(
        delta=inference_pb2.TokenDelta(index=0, text=" harbour", token_ids=[1234])
    ).SerializeToString()
    assert raw[0] == ENGINE_DELTA_TAG

    def splice() -> bytes:
        return ROUTER_DELTA_PREFIX + raw[1:]

    def parse_and_copy() -> bytes:
        event = engine_pb2.GenerateResponse.FromString(raw)
        return router_pb2.GenerateResponse(delta=event.delta).SerializeToString()

    assert router_pb2.GenerateResponse.FromString(splice()) == router_pb2.GenerateResponse.FromString(
        parse_and_copy()
    )
    number = 200_000
    spliced = min(timeit.repeat(splice, number=number, repeat=3)) / number * 1e6
    copied = min(timeit.repeat(parse_and_copy, number=number, repeat=3)) / number * 1e6
    return {"splice_us": spliced, "parse_copy_serialize_us": copied, "ratio": copied / spliced}


# -- main --------------------------------------------------------------------------------------------


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    headers = list(rows[0])
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


async def main(args: argparse.Namespace) -> dict:
    workload = conversations(args.conversations, args.turns)
    policies = [await run_policy(p, workload, args.concurrency, args.reply_tokens) for p in POLICIES]
    baseline = next(r for r in policies if r.policy == "round_robin")
    policy_rows = [
        {
            **asdict(r),
            "ttft_mean_vs_round_robin": r.ttft_mean_ms / baseline.ttft_mean_ms,
            "rps_vs_round_robin": r.requests_per_s / baseline.requests_per_s,
        }
        for r in policies
    ]
    print_table(
        f"1. replica policy: {args.conversations} conversations x {args.turns} turns, concurrency "
        f"{args.concurrency}, {ENGINES} engines {CACHE_SIM}",
        policy_rows,
    )

    mixed = mixed_workload(args.mixed_requests)
    preferences = await run_preferences(mixed, args.concurrency)
    print_table(
        f"2. credits by preference: {args.mixed_requests} mixed requests", [asdict(r) for r in preferences]
    )

    chats = [chat_request([("system", s), ("user", u)], 16) for s, turns in workload for u in turns[:2]]
    cost = await decision_cost(chats + mixed, rounds=args.decision_rounds)
    print_table("3. routing decision (score + model choice + replica choice)", [asdict(cost)])

    forwarding = forwarding_cost()
    print_table("4. per-delta forwarding in the router", [forwarding])

    return {
        "config": vars(args) | {"engines": ENGINES, "cache_sim": CACHE_SIM},
        "replica_policies": policy_rows,
        "preferences": [asdict(r) for r in preferences],
        "routing_decision": asdict(cost),
        "forwarding": forwarding,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=48)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--reply-tokens", type=int, default=48)
    parser.add_argument("--mixed-requests", type=int, default=150)
    parser.add_argument("--decision-rounds", type=int, default=10)
    logging.basicConfig(level=logging.WARNING)
    import uvloop

    try:
        results = uvloop.run(main(parser.parse_args()))
    finally:
        shutil.rmtree(WORKDIR, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "routing.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {RESULTS / 'routing.json'}")
