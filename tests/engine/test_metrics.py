"""The engine's metrics port serves Prometheus' text format (with vLLM, vLLM's engine metrics)."""

from __future__ import annotations

import httpx

from tests.engine.engine_client import running_engine


async def test_metrics_port_serves_prometheus_text_while_running():
    async with running_engine(backend="sim", metrics_port=0) as engine:
        port = engine.server.metrics.port
        async with httpx.AsyncClient() as http:
            response = await http.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    assert "# TYPE" in response.text
    assert engine.server.metrics is None, "stopping the engine closes its metrics port"
