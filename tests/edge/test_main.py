"""`python -m services.edge`, as `switchyard up` runs it: settings from the environment, SIGTERM
stops it cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

import httpx

from services.edge.settings import hash_api_key
from tests.edge.conftest import API_KEY, AUTH, HANG_GUARD

REPO = Path(__file__).resolve().parents[2]


async def test_the_edge_runs_alone_from_env_settings_and_stops_on_sigterm(router_server):
    server, _ = router_server
    env = {
        **os.environ,
        "SWITCHYARD_EDGE_HOST": "127.0.0.1",
        "SWITCHYARD_EDGE_PORT": "0",
        "SWITCHYARD_EDGE_ROUTER_ADDRESS": f"127.0.0.1:{server.port}",
        "SWITCHYARD_EDGE_API_KEY_HASHES": json.dumps([hash_api_key(API_KEY)]),
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
            assert (await http.get("/v1/models")).status_code == 401
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), HANG_GUARD) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
