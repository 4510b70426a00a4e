"""What the state layer costs per request, measured on the facade the router calls.

    .venv/bin/python -m bench.accounting [--seconds 3] [--database URL]

Each simulated request does what the router servicer does around a generation: authenticate,
admit (limits + credit hold), settle, record a log entry. Scenarios: a free model (no database on
the request path) and a priced one (two transactions: hold, settle), at concurrency 1 and 32, on the
embedded SQLite (or --database). The baseline, measured in the same run, is the same loop with the
accounting calls replaced by nothing but the one await a request handler makes anyway. The table
gives requests/s, the accounting time per request (this scenario's time per request less the
baseline's, times the concurrency), and "gateway load": the share of this layer's capacity that the
gateway's own request rate (bench/results/gateway.json, same concurrency, when present) would use,
which is roughly the throughput the gateway would lose to it on a shared core.

This is not the end-to-end figure issue 5 asks for (gateway with accounting on vs off); that one
needs the router servicer integration and belongs in bench.gateway once it lands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

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
                settlement = await accounting.settle(admission, USAGE)
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
                # The next scenario starts with an empty log queue, not this one's backlog.
                await accounting.flush_log()
    finally:
        await accounting.close()
    return results


def _gateway_rps() -> dict[int, float]:
    path = RESULTS / "gateway.json"
    if not path.exists():
        return {}
    rows = json.loads(path.read_text())["results"]
    return {r["concurrency"]: r["rps"] for r in rows if r["path"] == "gateway" and r["mode"] == "json"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per scenario")
    parser.add_argument("--database", help="SQLAlchemy async URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database or f"sqlite+aiosqlite:///{tmp}/bench.db"
        results = asyncio.run(run(args.seconds, url))
    gateway = _gateway_rps()
    baseline = {r.concurrency: r for r in results if r.scenario == "baseline"}
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
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "accounting.json").write_text(json.dumps({"results": rows, "gateway_rps": gateway}, indent=1))


if __name__ == "__main__":
    main()
