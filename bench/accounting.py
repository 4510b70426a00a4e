"""What accounting costs: the state layer per request, and the whole gateway with it on vs off.

    .venv/bin/python -m bench.accounting [--part all|state|gateway] [--seconds 3] [--gateway-seconds 6]
                                         [--database URL]

State layer: each simulated request does what the router does around a generation: authenticate,
admit (limits + a hold drawn from the key's credit lease), settle in the background as the router
does (the charge is written with the next batch), record a log entry. Scenarios: a free model and a
priced one, at concurrency 1 and 32, on the embedded SQLite (or --database). The baseline, measured
in the same run, is the same loop with the accounting calls replaced by nothing but the one await a
request handler makes anyway. The table gives requests/s, the accounting time per request (this
scenario's time per request less the baseline's, times the concurrency), and "gateway load": the
share of this layer's capacity that the gateway's own request rate (bench/results/gateway.json, same
concurrency, when present) would use.

Gateway (issue 5's figure): two `switchyard up --engine sim` stacks (three processes each) run side
by side, one with the router's accounting disabled (SWITCHYARD_ROUTER_ACCOUNTING__ENABLED=false: no
keys, credits, limits, request log or cache) and one with everything on (the key checked, credits
held and settled on the embedded SQLite for the priced local model, the request log written). The
same closed-loop load of non-streaming chat requests (16 tokens, sampled, so never cached) goes to
each in alternating slices, so that both see the same machine; the ratio on/off of requests per
second is the figure (target >= 0.90). The router's CPU time per request shows where the cost lands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from services.router.accounting import (
    FREE,
    Accounting,
    AccountingSettings,
    KeyPolicy,
    Prices,
    RequestLogEntry,
)
from switchyard.inference.v1 import inference_pb2

RESULTS = Path(__file__).parent / "results"
USAGE = inference_pb2.Usage(prompt_tokens=20, completion_tokens=16)
PRICED = Prices(input_per_million=0.5, output_per_million=1.5)


@dataclass
class Result:
    scenario: str
    concurrency: int
    requests: int
    rps: float
    per_request_us: float


async def _drive(seconds: float, concurrency: int, one_request) -> tuple[int, float]:
    deadline = time.perf_counter() + seconds
    done = 0

    async def worker(w: int) -> None:
        nonlocal done
        n = 0
        while time.perf_counter() < deadline:
            n += 1
            await one_request(f"{w}-{n}")
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return done, time.perf_counter() - started


async def run(seconds: float, database_url: str) -> list[Result]:
    accounting = Accounting(AccountingSettings(database_url=database_url, instance_name="bench"))
    await accounting.start()
    _, secret = await accounting.keys.create(
        KeyPolicy(name="bench", requests_per_minute=10**9), credits=10**6
    )
    results = []
    try:

        async def baseline(request_id: str) -> None:
            await asyncio.sleep(0)

        def accounted(prices: Prices):
            async def one_request(request_id: str) -> None:
                principal = await accounting.authenticate(secret)
                admission = await accounting.admit(
                    principal,
                    request_id=request_id,
                    model="bench/m",
                    prices=prices,
                    prompt_tokens=20,
                    max_completion_tokens=16,
                )
                await asyncio.sleep(0)  # the generation
                settlement = accounting.settle_in_background(admission, USAGE)
                accounting.record(
                    RequestLogEntry(
                        request_id=request_id,
                        key_id=principal.key_id,
                        model="bench/m",
                        prompt_tokens=20,
                        completion_tokens=16,
                        cost_nanocredits=settlement.cost_nanocredits,
                    )
                )

            return one_request

        for concurrency in (1, 32):
            for scenario, one_request in (
                ("baseline", baseline),
                ("free model", accounted(FREE)),
                ("priced model", accounted(PRICED)),
            ):
                done, elapsed = await _drive(seconds, concurrency, one_request)
                results.append(
                    Result(scenario, concurrency, done, done / elapsed, elapsed / done * 1e6 * concurrency)
                )
                # The next scenario starts with an empty log queue and no charges to write.
                await accounting.flush_log()
                await accounting.settled()
    finally:
        await accounting.close()
    return results


def _gateway_rps() -> dict[int, float]:
    path = RESULTS / "gateway.json"
    if not path.exists():
        return {}
    rows = json.loads(path.read_text())["results"]
    return {r["concurrency"]: r["rps"] for r in rows if r["path"] == "gateway" and r["mode"] == "json"}


def state_layer(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database or f"sqlite+aiosqlite:///{tmp}/bench.db"
        results = asyncio.run(run(args.seconds, url))
    gateway = _gateway_rps()
    baseline = {r.concurrency: r for r in results if r.scenario == "baseline"}
    print("state layer: the router's accounting calls per request, against an empty loop")
    print(f"{'scenario':<14}{'conc':>5}{'req/s':>10}{'us/req':>9}{'vs baseline':>13}{'gateway load':>14}")
    rows = []
    for r in results:
        base = baseline[r.concurrency]
        # Accounting's own time per request: this scenario's time less the baseline loop's.
        own_us = max(0.0, 1e6 / r.rps - 1e6 / base.rps) * r.concurrency if r is not base else 0.0
        budget = 1e6 / gateway[r.concurrency] * r.concurrency if r.concurrency in gateway else None
        share = f"{own_us / budget:.1%}" if budget and r is not base else "-"
        print(
            f"{r.scenario:<14}{r.concurrency:>5}{r.rps:>10.0f}{own_us:>9.0f}"
            f"{r.rps / base.rps:>13.3f}{share:>14}"
        )
        rows.append(asdict(r) | {"accounting_us_per_request": own_us, "ratio_to_baseline": r.rps / base.rps})
    return {"results": rows, "gateway_rps": gateway}


# --- through the gateway --------------------------------------------------------------------------

GATEWAY_KEY = "sy-bench-accounting"
MODEL = "switchyard/sim"
CHAT_BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Tell me about the rivers of Europe."}],
    "max_tokens": 16,
    "ignore_eos": True,
    # Sampled: never answered from the response cache, so both stacks generate every request.
    "temperature": 1.0,
}
MODES = ("off", "on")
# Each mode's time per concurrency is cut into this many alternating slices.
SLICES = 3


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _child_pid(parent: int, module: str) -> int:
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
        if ppid == parent and module.encode() in args:
            return int(entry)
    raise RuntimeError(f"no {module} process under {parent}")


@dataclass
class Stack:
    """One `switchyard up --engine sim`."""

    mode: str
    process: asyncio.subprocess.Process
    base_url: str
    router_pid: int

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 60)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def start_stack(mode: str, database_url: str) -> Stack:
    http_port = _free_port()
    env = {**os.environ, "SWITCHYARD_ROUTER_ACCOUNTING__ENABLED": "true" if mode == "on" else "false"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "up", "--engine", "sim", "--api-key", GATEWAY_KEY,
        "--http-port", str(http_port), "--router-port", str(_free_port()),
        "--engine-port", str(_free_port()), "--database", database_url,
        "--log-level", "WARNING", "--startup-timeout", "120",
        env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(150):
            while b"is up" not in (line := await process.stdout.readline()):
                if not line:
                    raise RuntimeError(f"switchyard up (accounting {mode}) exited before it was up")
    except BaseException:
        if process.returncode is None:
            process.kill()
        raise
    # Keep reading its output, so that a full pipe never blocks it.
    asyncio.get_running_loop().create_task(process.stdout.read())
    return Stack(mode, process, f"http://127.0.0.1:{http_port}", _child_pid(process.pid, "services.router"))


@dataclass
class Slices:
    """What one mode did over its slices at one concurrency."""

    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    router_cpu: float = 0.0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def load_slice(
    session: aiohttp.ClientSession, stack: Stack, concurrency: int, seconds: float, into: Slices
):
    """Closed loop: `concurrency` clients send requests back to back for `seconds`."""
    url = f"{stack.base_url}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {GATEWAY_KEY}"}
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            async with session.post(url, json=CHAT_BODY, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"accounting {stack.mode}: HTTP {response.status}")
            into.latencies.append(time.perf_counter() - started)

    cpu_before, started = _process_cpu(stack.router_pid), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    into.elapsed += time.perf_counter() - started
    into.router_cpu += _process_cpu(stack.router_pid) - cpu_before


async def gateway_run(seconds: float, database_url: str) -> dict[int, dict[str, Slices]]:
    stacks = {}
    try:
        for mode in MODES:
            stacks[mode] = await start_stack(mode, database_url)
        results: dict[int, dict[str, Slices]] = {}
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            for concurrency in (1, 32):
                for mode in MODES:  # warm-up: connections, the router's key cache, SQLite pages
                    await load_slice(session, stacks[mode], concurrency, 1.0, Slices())
                results[concurrency] = {mode: Slices() for mode in MODES}
                for _ in range(SLICES):
                    for mode in MODES:
                        await load_slice(
                            session, stacks[mode], concurrency, seconds / SLICES, results[concurrency][mode]
                        )
        return results
    finally:
        await asyncio.gather(*(stack.stop() for stack in stacks.values()))


def gateway(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database or f"sqlite+aiosqlite:///{tmp}/gateway.db"
        results = asyncio.run(gateway_run(args.gateway_seconds, url))
    print(
        "\ngateway: switchyard up --engine sim, non-streaming chat of 16 tokens, accounting and the "
        "request log off vs on, alternating slices of one run"
    )
    header = ("conc", "accounting", "req/s", "p50 ms", "p99 ms", "router CPU ms/req", "on/off")
    print("{:>4}  {:<11}{:>8}{:>9}{:>9}{:>19}{:>8}".format(*header))
    rows, ratios = [], {}
    for concurrency, by_mode in results.items():
        for mode, done in by_mode.items():
            ratio = done.rps / by_mode["off"].rps
            cpu_ms = done.router_cpu / len(done.latencies) * 1000
            print(
                f"{concurrency:>4}  {mode:<11}{done.rps:>8.0f}{done.percentile(50) * 1000:>9.2f}"
                f"{done.percentile(99) * 1000:>9.2f}{cpu_ms:>19.3f}{ratio:>8.3f}"
            )
            rows.append(
                {
                    "concurrency": concurrency,
                    "accounting": mode,
                    "requests": len(done.latencies),
                    "rps": done.rps,
                    "p50_ms": done.percentile(50) * 1000,
                    "p99_ms": done.percentile(99) * 1000,
                    "router_cpu_ms_per_request": cpu_ms,
                }
            )
        ratios[concurrency] = by_mode["on"].rps / by_mode["off"].rps
    return {"results": rows, "rps_ratio_on_to_off": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["all", "state", "gateway"], default="all")
    parser.add_argument("--seconds", type=float, default=3.0, help="per state-layer scenario")
    parser.add_argument("--gateway-seconds", type=float, default=6.0, help="per mode and concurrency")
    parser.add_argument("--database", help="SQLAlchemy async URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    path = RESULTS / "accounting.json"
    recorded = json.loads(path.read_text()) if path.exists() else {}
    if args.part in ("all", "state"):
        recorded["state_layer"] = state_layer(args)
    if args.part in ("all", "gateway"):
        recorded["gateway"] = gateway(args)
    RESULTS.mkdir(exist_ok=True)
    path.write_text(
        json.dumps({k: v for k, v in recorded.items() if k in ("state_layer", "gateway")}, indent=1)
    )


if __name__ == "__main__":
    main()
