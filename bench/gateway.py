"""What the gateway adds: the same load straight to a sim engine (zero delay) over gRPC, and through
edge -> router -> engine over HTTP, in one run. Real processes started by `switchyard up`.

    .venv/bin/python -m bench.gateway [--seconds 8] [--rounds 2]

Paths: `direct` (the engine alone), `gateway` (edge -> router -> engine with the router's accounting
off: the serving path itself) and `gateway+acct` (what `switchyard up` serves by default: keys,
credits, rate limits and the request log on, here on a throwaway SQLite database). Requests ask the
router's response cache to stay out of the way, so every request is generated.

Scenarios: non-streaming (16 tokens) and streaming (256 tokens), at concurrency 1 and 32. Each
scenario alternates the paths (`--rounds` runs of `--seconds / --rounds` each), so that a burst of
other load on the machine hits them alike. Reports req/s, p50/p99 latency, time to first token,
streamed tokens/s, tokens per message (gRPC messages direct, SSE events through the edge: the engine
merges the deltas that pile up while its stream is busy, see services/engine/coalesce.py), and the
ratios to direct (and of accounting on to off).

Everything shares this machine's cores, so the table also says where the CPU went: CPU time per
request of the load generator itself and of each service process (all their threads), and how busy
the machine was with work that is none of these (other users). CPU per request is the steadier
figure on a shared machine; wall-clock rates move with whatever else runs.
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
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import grpc
import uvloop

from switchyard.engine.v1 import engine_service_pb2, engine_service_pb2_grpc
from switchyard.inference.v1 import inference_pb2

MODEL = "switchyard/sim"
API_KEY = "sy-bench-key"
PROMPT = "Benchmark the gateway with a short prompt of about twelve words in all."
RESULTS = Path(__file__).parent / "results"
SERVICES = ("engine", "router", "edge")
_TICKS = os.sysconf("SC_CLK_TCK")


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
    tokens_per_message: float
    # CPU milliseconds per request, by process ("client" is this load generator).
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)
    # Share of the machine's cores busy with other work (neither this client nor the services).
    other_load: float = 0.0


@dataclass
class Sample:
    """One run's raw figures; a scenario's rounds add up."""

    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    tokens: int = 0
    messages: int = 0
    elapsed: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    machine_busy: float = 0.0  # core-seconds, every process

    def add(self, other: Sample) -> None:
        self.latencies += other.latencies
        self.ttfts += other.ttfts
        self.tokens += other.tokens
        self.messages += other.messages
        self.elapsed += other.elapsed
        self.machine_busy += other.machine_busy
        for name, seconds in other.cpu.items():
            self.cpu[name] = self.cpu.get(name, 0.0) + seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# --- CPU accounting (Linux /proc) ----------------------------------------------------------------


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def machine_busy() -> float:
    """Core-seconds every process on the machine has spent busy so far."""
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / _TICKS


def service_pids(parent: int) -> dict[str, int]:
    """The engine, router and edge processes `switchyard up` (pid `parent`) started."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                args = cmdline.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        for name in SERVICES:
            if ppid == parent and f"services.{name}".encode() in args:
                found[name] = int(entry)
    return found


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    return {"client": time.process_time()} | {name: process_cpu(pid) for name, pid in pids.items()}


# --- load ----------------------------------------------------------------------------------------


async def run_load(one_request, concurrency: int, seconds: float, pids: dict[str, int]) -> Sample:
    """Closed loop: `concurrency` workers issue requests back to back for `seconds`.
    `one_request(start)` returns (time of the first token, tokens, messages that carried tokens)."""
    sample = Sample()
    stop_at = time.perf_counter() + seconds

    async def worker():
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            first, tokens, messages = await one_request(start)
            sample.latencies.append(time.perf_counter() - start)
            sample.ttfts.append(first - start)
            sample.tokens += tokens
            sample.messages += messages

    cpu_before, busy_before = cpu_snapshot(pids), machine_busy()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    sample.elapsed = time.perf_counter() - started
    cpu_after = cpu_snapshot(pids)
    sample.machine_busy = machine_busy() - busy_before
    sample.cpu = {name: cpu_after[name] - cpu_before[name] for name in cpu_before}
    return sample


def direct_request(stub, max_tokens: int):
    request = engine_service_pb2.GenerateRequest(
        model=MODEL,
        input=inference_pb2.GenerationInput(
            prompt=inference_pb2.TextPrompt(text=PROMPT),
            sampling=inference_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0),
        ),
    )

    async def one(start: float) -> tuple[float, int, int]:
        first, tokens, messages = 0.0, 0, 0
        async for event in stub.Generate(request):
            if event.HasField("delta"):
                messages += 1
                if not first:
                    first = time.perf_counter()
            else:
                tokens = event.finished.usage.completion_tokens
        return first, tokens, messages

    return one


def edge_request(session: aiohttp.ClientSession, base: str, max_tokens: int, stream: bool):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    # Greedy requests are what the router's response cache serves; this measures generation.
    headers = {"Authorization": f"Bearer {API_KEY}", "x-switchyard-cache": "off"}

    async def one(start: float) -> tuple[float, int, int]:
        async with session.post(f"{base}/v1/completions", json=body, headers=headers) as response:
            if response.status != 200:
                raise RuntimeError(f"{response.status}: {await response.text()}")
            if not stream:
                payload = await response.json()
                return time.perf_counter(), payload["usage"]["completion_tokens"], 1
            # The raw bytes, not line by line: the client should cost as little as it can.
            first, parts = 0.0, []
            async for part in response.content.iter_any():
                if not first:
                    first = time.perf_counter()
                parts.append(part)
        events = b"".join(parts).split(b"\n\n")
        usage = json.loads(next(event for event in reversed(events) if b'"usage":{' in event)[6:])
        # The events that carry tokens: all but the usage chunk (and [DONE]).
        messages = sum(event.startswith(b"data: {") for event in events) - 1
        return first, usage["usage"]["completion_tokens"], messages

    return one


def summarise(path: str, mode: str, concurrency: int, sample: Sample, cores: int) -> Result:
    requests = len(sample.latencies)
    ours = sum(sample.cpu.values())
    return Result(
        path=path, mode=mode, concurrency=concurrency, requests=requests,
        rps=requests / sample.elapsed,
        p50_ms=statistics.median(sample.latencies) * 1000, p99_ms=percentile(sample.latencies, 99) * 1000,
        ttft_p50_ms=statistics.median(sample.ttfts) * 1000, ttft_p99_ms=percentile(sample.ttfts, 99) * 1000,
        tokens_per_s=sample.tokens / sample.elapsed,
        tokens_per_message=sample.tokens / max(sample.messages, 1),
        cpu_ms_per_request={name: seconds * 1000 / requests for name, seconds in sample.cpu.items()},
        other_load=max(0.0, sample.machine_busy - ours) / (sample.elapsed * cores),
    )


@dataclass
class Suite:
    process: subprocess.Popen
    http_base: str
    engine_address: str
    pids: dict[str, int]


def start_suite(database_dir: str, accounting: bool) -> Suite:
    """`switchyard up --engine sim` on free ports, its database (which `up` makes even when the
    router's accounting is off) in `database_dir`."""
    http, router, engine = free_port(), free_port(), free_port()
    command = [
        sys.executable, "-m", "services.cli", "up", "--engine", "sim", "--api-key", API_KEY,
        "--http-port", str(http), "--router-port", str(router), "--engine-port", str(engine),
        "--log-level", "WARNING", "--startup-timeout", "120",
        "--database", f"sqlite+aiosqlite:///{database_dir}/{'accounting' if accounting else 'unused'}.db",
    ]
    env = dict(os.environ)
    if not accounting:
        env["SWITCHYARD_ROUTER_ACCOUNTING__ENABLED"] = "false"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    for line in process.stdout:
        if "is up" in line:
            pids = service_pids(process.pid)
            return Suite(process, f"http://127.0.0.1:{http}", f"127.0.0.1:{engine}", pids)
    raise RuntimeError("switchyard up did not start")


def stop_suite(suite: Suite) -> None:
    suite.process.send_signal(signal.SIGTERM)
    suite.process.wait(30)


async def measure(args) -> list[Result]:
    cores = os.cpu_count() or 1
    results = []
    suites: dict[str, Suite] = {}
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as database_dir:
        try:
            suites["gateway"] = start_suite(database_dir, accounting=False)
            suites["gateway+acct"] = start_suite(database_dir, accounting=True)
            # Every process of both suites: CPU per request counts whichever path did the work.
            pids = {
                f"{name}{'+acct' if path == 'gateway+acct' else ''}": pid
                for path, suite in suites.items()
                for name, pid in suite.pids.items()
            }
            channel = grpc.aio.insecure_channel(suites["gateway"].engine_address)
            stub = engine_service_pb2_grpc.EngineServiceStub(channel)
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                for mode, max_tokens, stream in (("json", 16, False), ("stream", 256, True)):
                    for concurrency in (1, 32):
                        paths = {"direct": direct_request(stub, max_tokens)} | {
                            path: edge_request(session, suite.http_base, max_tokens, stream)
                            for path, suite in suites.items()
                        }
                        samples = {path: Sample() for path in paths}
                        for one in paths.values():
                            await run_load(one, concurrency, args.warmup, pids)
                        seconds = args.seconds / args.rounds
                        for _ in range(args.rounds):
                            for path, one in paths.items():
                                samples[path].add(await run_load(one, concurrency, seconds, pids))
                        for path, sample in samples.items():
                            results.append(summarise(path, mode, concurrency, sample, cores))
                            print(_row(results[-1]), flush=True)
            await channel.close()
        finally:
            for suite in suites.values():
                stop_suite(suite)
    return results


def _row(r: Result) -> str:
    # The processes that did this path's work (the others idle, at a few microseconds per request).
    cpu = " ".join(f"{name} {ms:.2f}" for name, ms in r.cpu_ms_per_request.items() if ms >= 0.05)
    return (f"{r.mode:6} c={r.concurrency:<3} {r.path:12} {r.rps:7.1f} req/s  p50 {r.p50_ms:7.2f} ms  "
            f"p99 {r.p99_ms:7.2f} ms  ttft p50 {r.ttft_p50_ms:6.2f} ms  {r.tokens_per_s:7.0f} tok/s  "
            f"{r.tokens_per_message:5.1f} tok/msg | CPU ms/req: {cpu} | other load {r.other_load:.0%}")


def ratios(results: list[Result]) -> list[dict]:
    """Each gateway path against direct (and accounting on against off) in the same scenario."""
    rows = []
    for measured in results:
        if measured.path == "direct":
            continue
        for baseline_path in ("direct", "gateway") if measured.path == "gateway+acct" else ("direct",):
            baseline = next(r for r in results if r.path == baseline_path and r.mode == measured.mode
                            and r.concurrency == measured.concurrency)
            rows.append({
                "path": measured.path, "baseline": baseline_path,
                "mode": measured.mode, "concurrency": measured.concurrency,
                "rps_ratio": measured.rps / baseline.rps,
                "tokens_per_s_ratio": measured.tokens_per_s / baseline.tokens_per_s,
                "added_p50_ms": measured.p50_ms - baseline.p50_ms,
                "added_ttft_p50_ms": measured.ttft_p50_ms - baseline.ttft_p50_ms,
                "cpu_ms_per_request_ratio": sum(measured.cpu_ms_per_request.values())
                / sum(baseline.cpu_ms_per_request.values()),
            })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per scenario, per path")
    parser.add_argument("--rounds", type=int, default=2, help="direct/gateway alternations per scenario")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before a scenario")
    args = parser.parse_args()
    results = uvloop.run(measure(args))
    print("\nratios:")
    for row in ratios(results):
        print(f"  {row['path'] + ' / ' + row['baseline']:24} {row['mode']:6} c={row['concurrency']:<3} "
              f"req/s x{row['rps_ratio']:.2f}  "
              f"tok/s x{row['tokens_per_s_ratio']:.2f}  {row['added_p50_ms']:+.2f} ms p50  "
              f"{row['added_ttft_p50_ms']:+.2f} ms ttft p50  "
              f"CPU/request x{row['cpu_ms_per_request_ratio']:.1f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "gateway.json"
    out.write_text(json.dumps({
        "results": [asdict(r) for r in results], "ratios": ratios(results),
        "settings": vars(args), "machine": {"cpus": os.cpu_count()},
    }, indent=2))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
