"""Switchyard on vLLM against vLLM's own OpenAI server: the same streaming workload on the same model
with the same engine settings, one server after the other, in one run.

    .venv/bin/python -m bench.vllm_server [--rounds 5] [--seconds 2.5] [--max-tokens 128] [--model PATH]

Paths measured:
  vllm        `python -m vllm.entrypoints.openai.api_server` over HTTP: the baseline
  switchyard  edge -> router -> vLLM engine over HTTP, as `switchyard up --engine vllm` runs them
  engine      the same Switchyard vLLM engine over gRPC, without edge and router: where a gap comes from
Streaming completions (ignore_eos, greedy) at concurrency 1 and 16: completion tokens/s, time to first
token p50/p99, and each path's ratio to the baseline. Loopback only; results go to
bench/results/vllm_server.json. The model is the tiny local one unless --model names another.
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
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import grpc

from services.engine.tiny_model import ensure_tiny_model
from switchyard.engine.v1 import engine_service_pb2, engine_service_pb2_grpc
from switchyard.inference.v1 import inference_pb2

MODEL = "switchyard/tiny-llama"
API_KEY = "sy-bench-vllm"
PROMPT = "Compare the gateway with the engine's own server on one short prompt of a dozen words."
CONCURRENCIES = (1, 16)
RESULTS = Path(__file__).parent / "results"
CACHE = Path(os.environ.get("SWITCHYARD_CACHE_DIR") or Path(__file__).resolve().parents[1] / ".cache")
STARTUP_TIMEOUT = 300.0

# One request: its start time in, (time of the first token, completion tokens) out.
OneRequest = Callable[[], Awaitable[tuple[float, int]]]


@dataclass
class Result:
    path: str
    concurrency: int
    requests: int
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    latency_p50_ms: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def engine_env() -> dict[str, str]:
    """What both servers run with: vLLM's CPU build settings, offline, caches in the project."""
    return {
        **os.environ,
        "SWITCHYARD_CACHE_DIR": str(CACHE),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(CACHE / "hf"),
        "VLLM_CACHE_ROOT": str(CACHE / "vllm"),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "TORCHDYNAMO_DISABLE": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }


class Server:
    """A server process in its own session, so that stopping it also reaches its engine core."""

    def __init__(self, command: list[str], log: Path) -> None:
        self.log = log
        self.process = subprocess.Popen(
            command,
            env=engine_env(),
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_until(self, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.process.args[2]} did not start; see {self.log}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # The session leader is gone; take down whatever it left behind in its group.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_vllm_server(model: str, port: int, kv_cache_mib: int, log_dir: Path) -> Server:
    server = Server(
        [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", model, "--served-model-name", MODEL,
            "--host", "127.0.0.1", "--port", str(port),
            "--enforce-eager", "--kv-cache-memory-bytes", str(kv_cache_mib * 1024 * 1024),
            "--disable-uvicorn-access-log", "--uvicorn-log-level", "warning",
        ],
        log_dir / "vllm-server.log",
    )  # fmt: skip
    server.wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"))
    return server


def start_switchyard(model: str, ports: dict[str, int], kv_cache_mib: int, log_dir: Path) -> Server:
    server = Server(
        [
            sys.executable, "-m", "services.cli", "up", "--engine", "vllm",
            "--model", model, "--served-model-name", MODEL, "--api-key", API_KEY,
            "--http-port", str(ports["http"]), "--router-port", str(ports["router"]),
            "--engine-port", str(ports["engine"]), "--kv-cache-mib", str(kv_cache_mib),
            "--log-level", "WARNING", "--log-dir", str(log_dir / "switchyard"),
        ],
        log_dir / "switchyard-up.log",
    )  # fmt: skip
    server.wait_until(lambda: http_ok(f"http://127.0.0.1:{ports['http']}/health"))
    return server


def http_request(
    session: aiohttp.ClientSession, base: str, max_tokens: int, api_key: str | None
) -> OneRequest:
    body = {
        "model": MODEL,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    # Switchyard's router would answer a repeated greedy request from its response cache.
    headers = {"Authorization": f"Bearer {api_key}", "x-switchyard-cache": "off"} if api_key else {}

    async def one() -> tuple[float, int]:
        first, tokens = 0.0, 0
        async with session.post(f"{base}/v1/completions", json=body, headers=headers) as response:
            if response.status != 200:
                raise RuntimeError(f"{base}: {response.status} {await response.text()}")
            async for line in response.content:
                if not line.startswith(b"data: {"):
                    continue
                if not first:
                    first = time.perf_counter()
                if b'"usage":{' in line:
                    tokens = json.loads(line[6:])["usage"]["completion_tokens"]
        return first, tokens

    return one


def grpc_request(stub: engine_service_pb2_grpc.EngineServiceStub, max_tokens: int) -> OneRequest:
    request = engine_service_pb2.GenerateRequest(
        model=MODEL,
        input=inference_pb2.GenerationInput(
            prompt=inference_pb2.TextPrompt(text=PROMPT),
            sampling=inference_pb2.SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True),
        ),
    )

    async def one() -> tuple[float, int]:
        first, tokens = 0.0, 0
        async for event in stub.Generate(request):
            if not first:
                first = time.perf_counter()
            if event.HasField("finished"):
                tokens = event.finished.usage.completion_tokens
        return first, tokens

    return one


async def run_load(
    one: OneRequest, concurrency: int, seconds: float
) -> tuple[list[float], list[float], int, float]:
    """Closed loop: `concurrency` clients send requests back to back for `seconds`."""
    ttfts: list[float] = []
    latencies: list[float] = []
    tokens = 0
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal tokens
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            first, count = await one()
            latencies.append(time.perf_counter() - start)
            ttfts.append(first - start)
            tokens += count

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return ttfts, latencies, tokens, time.perf_counter() - started


@dataclass
class Samples:
    ttfts: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    elapsed: float = 0.0

    def add(self, ttfts: list[float], latencies: list[float], tokens: int, elapsed: float) -> None:
        self.ttfts += ttfts
        self.latencies += latencies
        self.tokens += tokens
        self.elapsed += elapsed

    def result(self, path: str, concurrency: int) -> Result:
        return Result(
            path=path,
            concurrency=concurrency,
            requests=len(self.latencies),
            tokens_per_s=self.tokens / self.elapsed,
            ttft_p50_ms=statistics.median(self.ttfts) * 1000,
            ttft_p99_ms=percentile(self.ttfts, 99) * 1000,
            latency_p50_ms=statistics.median(self.latencies) * 1000,
        )


async def measure_interleaved(paths: dict[str, OneRequest], rounds: int, seconds: float) -> list[Result]:
    """Every path in turn, round after round, in a rotating order: the machine's other load (it is
    shared) then weighs on all paths alike instead of on whichever ran while it peaked."""
    for one in paths.values():
        for concurrency in CONCURRENCIES:
            await run_load(one, concurrency, 1.0)  # warm-up: connections, caches
    samples = {(path, c): Samples() for path in paths for c in CONCURRENCIES}
    names = list(paths)
    for round_ in range(rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for concurrency in CONCURRENCIES:
            for path in order:
                samples[path, concurrency].add(*await run_load(paths[path], concurrency, seconds))
        print(f"round {round_ + 1}/{rounds} done", flush=True)
    return [samples[path, c].result(path, c) for path in names for c in CONCURRENCIES]


async def measure(args: argparse.Namespace, model: str, log_dir: Path) -> list[Result]:
    vllm_port = free_port()
    ports = {"http": free_port(), "router": free_port(), "engine": free_port()}
    # Both stay up; an idle vLLM engine waits on its input queue and takes no CPU from the other.
    vllm = await asyncio.to_thread(start_vllm_server, model, vllm_port, args.kv_cache_mib, log_dir)
    try:
        switchyard = await asyncio.to_thread(start_switchyard, model, ports, args.kv_cache_mib, log_dir)
        try:
            timeout = aiohttp.ClientTimeout(total=600)
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session,
                grpc.aio.insecure_channel(f"127.0.0.1:{ports['engine']}") as channel,
            ):
                paths = {
                    "vllm": http_request(session, f"http://127.0.0.1:{vllm_port}", args.max_tokens, None),
                    "switchyard": http_request(
                        session, f"http://127.0.0.1:{ports['http']}", args.max_tokens, API_KEY
                    ),
                    "engine": grpc_request(
                        engine_service_pb2_grpc.EngineServiceStub(channel), args.max_tokens
                    ),
                }
                return await measure_interleaved(paths, args.rounds, args.seconds)
        finally:
            await asyncio.to_thread(switchyard.stop)
    finally:
        await asyncio.to_thread(vllm.stop)


def row(r: Result) -> str:
    return (
        f"{r.path:10} c={r.concurrency:<3} {r.requests:5} req  {r.tokens_per_s:8.0f} tok/s  "
        f"ttft p50 {r.ttft_p50_ms:7.2f} ms  p99 {r.ttft_p99_ms:7.2f} ms  "
        f"latency p50 {r.latency_p50_ms:8.1f} ms"
    )


def ratios(results: list[Result]) -> list[dict]:
    out = []
    for r in results:
        if r.path == "vllm":
            continue
        base = next(b for b in results if b.path == "vllm" and b.concurrency == r.concurrency)
        out.append(
            {
                "path": r.path,
                "concurrency": r.concurrency,
                "tokens_per_s_ratio": r.tokens_per_s / base.tokens_per_s,
                "added_ttft_p50_ms": r.ttft_p50_ms - base.ttft_p50_ms,
                "added_ttft_p99_ms": r.ttft_p99_ms - base.ttft_p99_ms,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="times each path is measured, interleaved")
    parser.add_argument(
        "--seconds", type=float, default=2.5, help="seconds per path and concurrency per round"
    )
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--kv-cache-mib", type=int, default=256, help="KV cache of both engines")
    parser.add_argument("--model", help="model folder (default: the tiny local model)")
    args = parser.parse_args()

    model = args.model or str(ensure_tiny_model())
    log_dir = CACHE / "bench" / "vllm_server"
    log_dir.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(measure(args, model, log_dir))
    for result in results:
        print(row(result))

    print("\nagainst vLLM's own server (same run):")
    for r in ratios(results):
        print(
            f"  {r['path']:10} c={r['concurrency']:<3} tok/s x{r['tokens_per_s_ratio']:.3f}  "
            f"ttft p50 {r['added_ttft_p50_ms']:+.2f} ms  p99 {r['added_ttft_p99_ms']:+.2f} ms"
        )
    out = RESULTS / "vllm_server.json"
    out.write_text(
        json.dumps(
            {
                "workload": {
                    "prompt": PROMPT,
                    "max_tokens": args.max_tokens,
                    "rounds": args.rounds,
                    "seconds_per_round": args.seconds,
                },
                "model": model,
                "results": [asdict(r) for r in results],
                "ratios": ratios(results),
                "machine": {"cpus": os.cpu_count()},
            },
            indent=2,
        )
    )
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
