"""`python -m services.edge`, as `switchyard up` runs it: settings from the environment, SIGTERM
stops it cleanly."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import httpx

from tests.edge.conftest import AUTH, HANG_GUARD

REPO = Path(__file__).resolve().parents[2]


async def test_the_edge_runs_alone_from_env_settings_and_stops_on_sigterm(router_server):
    server, _ = router_server
    env = {
        **os.environ,
        "SWITCHYARD_EDGE_HOST": "127.0.0.1",
        "SWITCHYARD_EDGE_PORT": "0",
        "SWITCHYARD_EDGE_ROUTER_ADDRESS": f"127.0.0.1:{server.port}",
        "SWITCHYARD_EDGE_LOG_LEVEL": "INFO",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.edge", cwd=REPO, env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        port = None
        while port is None:
            line = await asyncio.wait_for(process.stderr.readline(), HANG_GUARD)
            assert line, "the edge exited before listening"
            if found := re.search(rb"edge listening on http://127\.0\.0\.1:(\d+)", line):
                port = int(found.group(1))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=HANG_GUARD) as http:
            assert (await http.get("/health")).status_code == 200
            assert (await http.get("/v1/models", headers=AUTH)).status_code == 200
            assert (await http.get("/v1/models")).status_code == 401, "the router refuses, the edge answers"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), HANG_GUARD) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_retired_key_setting_stops_the_edge_saying_what_replaced_it(router_server):
    env = {**os.environ, "SWITCHYARD_EDGE_PORT": "0", "SWITCHYARD_EDGE_API_KEY_HASHES": '["ab12"]'}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.edge", cwd=REPO, env=env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), HANG_GUARD)
    assert process.returncode != 0
    assert b"switchyard keys create" in stderr
    assert b"ab12" not in stderr, "the value of a secret setting is never echoed"
