"""What the gateway adds: the same load straight to a sim engine (zero delay) over gRPC, and through
edge -> router -> engine over HTTP, in one run. Three real processes started by `switchyard up`.

    .venv/bin/python -m bench.gateway [--seconds 5]

Scenarios: non-streaming (16 tokens) and streaming (256 tokens), at concurrency 1 and 32. Reports
req/s, p50/p99 latency, time to first token and streamed tokens/s, and gateway/direct ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import grpc

from switchyard.engine.v1 import engine_service_pb2, engine_service_pb2_grpc
from switchyard.inference.v1 import inference_pb2

MODEL = "switchyard/sim"
API_KEY = "sy-bench-key"
PROMPT = "Benchmark the gateway with a short prompt of about twelve words in all."
RESULTS = Path(__file__).parent / "results"


@dataclass
class Result:
    path: str
    mode: str
    concurrency: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    tokens_per_s: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def run_load(one_request, concurrency: int, seconds: float) -> tuple[list[float], list[float], int, float]:
    """Closed loop: `concurrency` workers issue requests back to back for `seconds`."""
    latencies: list[float] = []
    ttfts: list[float] = []
    tokens = 0
    stop_at = time.perf_counter() + seconds

    async def worker():
        nonlocal tokens
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            first, count = await one_request(start)
            latencies.append(time.perf_counter() - start)
            ttfts.append(first - start)
            tokens += count

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, ttfts, tokens, time.perf_counter() - started


def direct_request(stub, max_tokens: int):
    request = engine_service_pb2.GenerateRequest(
        model=MODEL,
        input=inference_pb2.GenerationInput(
            prompt=inference_pb2.TextPrompt(text=PROMPT),
            sampling=inference_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0),
        ),
    )

    async def one(start: float) -> tuple[float, int]:
        first, count = 0.0, 0
        async for event in stub.Generate(request):
            if event.HasField("delta"):
                if not first:
                    first = time.perf_counter()
                count += len(event.delta.token_ids) or 1
            else:
                count = event.finished.usage.completion_tokens
        return first, count

    return one


def edge_request(session: aiohttp.ClientSession, base: str, max_tokens: int, stream: bool):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    headers = {"Authorization": f"Bearer {API_KEY}"}

    async def one(start: float) -> tuple[float, int]:
        async with session.post(f"{base}/v1/completions", json=body, headers=headers) as response:
            if response.status != 200:
                raise RuntimeError(f"{response.status}: {await response.text()}")
            if not stream:
                payload = await response.json()
                return time.perf_counter(), payload["usage"]["completion_tokens"]
            first, count = 0.0, 0
            async for line in response.content:
                if not line.startswith(b"data: {"):
                    continue
                if not first:
                    first = time.perf_counter()
                if b'"usage":{' in line:
                    count = json.loads(line[6:])["usage"]["completion_tokens"]
            return first, count

    return one


def summarise(path, mode, concurrency, latencies, ttfts, tokens, elapsed) -> Result:
    return Result(
        path=path, mode=mode, concurrency=concurrency, requests=len(latencies),
        rps=len(latencies) / elapsed,
        p50_ms=statistics.median(latencies) * 1000, p99_ms=percentile(latencies, 99) * 1000,
        ttft_p50_ms=statistics.median(ttfts) * 1000, ttft_p99_ms=percentile(ttfts, 99) * 1000,
        tokens_per_s=tokens / elapsed,
    )


def start_suite(http: int, router: int, engine: int) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "services.cli", "up", "--engine", "sim", "--api-key", API_KEY,
        "--http-port", str(http), "--router-port", str(router), "--engine-port", str(engine),
        "--log-level", "WARNING", "--startup-timeout", "120",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        if "is up" in line:
            return process
    raise RuntimeError("switchyard up did not start")


async def measure(args) -> list[Result]:
    http, router, engine = free_port(), free_port(), free_port()
    suite = start_suite(http, router, engine)
    base = f"http://127.0.0.1:{http}"
    results = []
    try:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{engine}")
        stub = engine_service_pb2_grpc.EngineServiceStub(channel)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            scenarios = [("json", 16, False), ("stream", 256, True)]
            for mode, max_tokens, stream in scenarios:
                for concurrency in (1, 32):
                    for path, make in (
                        ("direct", lambda: direct_request(stub, max_tokens)),
                        ("gateway", lambda: edge_request(session, base, max_tokens, stream)),
                    ):
                        one = make()
                        await run_load(one, concurrency, min(1.0, args.seconds))  # warm-up
                        measured = await run_load(one, concurrency, args.seconds)
                        results.append(summarise(path, mode, concurrency, *measured))
                        print(_row(results[-1]), flush=True)
        await channel.close()
    finally:
        suite.send_signal(signal.SIGTERM)
        suite.wait(30)
    return results


def _row(r: Result) -> str:
    return (f"{r.mode:6} c={r.concurrency:<3} {r.path:8} {r.rps:9.1f} req/s  p50 {r.p50_ms:7.2f} ms  "
            f"p99 {r.p99_ms:7.2f} ms  ttft p50 {r.ttft_p50_ms:7.2f} ms  {r.tokens_per_s:10.0f} tok/s")


def ratios(results: list[Result]) -> list[dict]:
    rows = []
    for gateway in (r for r in results if r.path == "gateway"):
        direct = next(r for r in results if r.path == "direct" and r.mode == gateway.mode
                      and r.concurrency == gateway.concurrency)
        rows.append({
            "mode": gateway.mode, "concurrency": gateway.concurrency,
            "rps_ratio": gateway.rps / direct.rps,
            "tokens_per_s_ratio": gateway.tokens_per_s / direct.tokens_per_s,
            "added_p50_ms": gateway.p50_ms - direct.p50_ms,
            "added_ttft_p50_ms": gateway.ttft_p50_ms - direct.ttft_p50_ms,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per scenario")
    args = parser.parse_args()
    results = asyncio.run(measure(args))
    print("\ngateway / direct:")
    for row in ratios(results):
        print(f"  {row['mode']:6} c={row['concurrency']:<3} req/s x{row['rps_ratio']:.2f}  "
              f"tok/s x{row['tokens_per_s_ratio']:.2f}  +{row['added_p50_ms']:.2f} ms p50  "
              f"+{row['added_ttft_p50_ms']:.2f} ms ttft p50")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "gateway.json"
    out.write_text(json.dumps({
        "results": [asdict(r) for r in results], "ratios": ratios(results),
        "machine": {"cpus": os.cpu_count()},
    }, indent=2))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
