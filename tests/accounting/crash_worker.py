"""A router under load, to be killed with SIGKILL by test_crash_reconcile.py.

    python -m tests.accounting.crash_worker DATABASE_URL SECRET

Holds LONG_RUNNING requests open for good (the requests a crash interrupts) while CHURNERS loops
reserve and settle as fast as they can. Prints "settled" after every settlement it saw complete
and "ready" once the long-running holds exist; it never exits by itself.
"""

from __future__ import annotations

import asyncio
import sys

from services.router.accounting import Accounting, AccountingSettings, Prices
from switchyard.inference.v1 import inference_pb2

INSTANCE = "crash-router"
LONG_RUNNING = 4
CHURNERS = 4
PRICES = Prices(input_per_million=1000.0, output_per_million=2000.0)


async def main(database_url: str, secret: str) -> None:
    accounting = Accounting(AccountingSettings(database_url=database_url, instance_name=INSTANCE))
    await accounting.start()
    principal = await accounting.authenticate(secret)

    async def admit(request_id: str):
        return await accounting.admit(
            principal,
            request_id=request_id,
            model="acme/model",
            prices=PRICES,
            prompt_tokens=10,
            max_completion_tokens=20,
        )

    for i in range(LONG_RUNNING):
        await admit(f"long-{i}")
    print("ready", flush=True)

    async def churn(worker: int) -> None:
        n = 0
        while True:
            n += 1
            admission = await admit(f"churn-{worker}-{n}")
            await accounting.settle(
                admission, inference_pb2.Usage(prompt_tokens=10, completion_tokens=n % 20)
            )
            print("settled", flush=True)

    await asyncio.gather(*(churn(w) for w in range(CHURNERS)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
