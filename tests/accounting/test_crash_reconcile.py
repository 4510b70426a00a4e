"""kill -9 under load, then a restart: the ledger comes out exact (balance = top-ups - settled
charges, every lease returned once, nothing billed twice)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from services.router.accounting import Accounting

from .conftest import assert_exact_ledger, ledger_figures, new_key
from .crash_worker import INSTANCE

REPO_ROOT = Path(__file__).resolve().parents[2]
SETTLEMENTS_BEFORE_KILL = 200


async def test_reconcile_after_sigkill_under_load_leaves_an_exact_ledger(accounting, settings):
    key_id, secret = await new_key(accounting, credits=1_000.0)
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.accounting.crash_worker",
        settings.database_url,
        secret,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert await asyncio.wait_for(worker.stdout.readline(), 60) == b"ready\n"
        settled = 0
        while settled < SETTLEMENTS_BEFORE_KILL:
            line = await asyncio.wait_for(worker.stdout.readline(), 60)
            assert line == b"settled\n", line
            settled += 1
        worker.send_signal(signal.SIGKILL)  # mid-load: transactions in flight die with it
    finally:
        if worker.returncode is None:
            worker.kill()
        await worker.wait()
    assert worker.returncode == -signal.SIGKILL

    crashed = await ledger_figures(accounting.database, key_id)
    # The router's lease on the key, holding at least the long-running requests' holds.
    assert crashed["open_holds"] == 1
    assert crashed["reservation"] + crashed["release"] < 0
    assert crashed["settlements"] >= SETTLEMENTS_BEFORE_KILL
    # Even before reconciling, the books balance: every change is in the ledger.
    assert crashed["balance"] == sum(crashed[k] for k in ("top_up", "reservation", "release", "settlement"))

    restarted = Accounting(settings.model_copy(update={"instance_name": INSTANCE}))
    await restarted.start()  # reconciles
    try:
        figures = await ledger_figures(restarted.database, key_id)
        assert_exact_ledger(figures)
        # The interrupted requests were released, not billed: the settled charges are unchanged.
        assert figures["settlement"] == crashed["settlement"]
        assert figures["settlements"] == crashed["settlements"]
        assert figures["balance"] == figures["top_up"] + crashed["settlement"]

        # A second restart finds nothing left to do.
        assert await restarted.reconcile(own=True) == 0
    finally:
        await restarted.close()
