"""Operators scrape the router's own metrics port: requests, latency, tokens per served model."""

from __future__ import annotations

import httpx

from tests.router.requests import generate_request, prompt_input


async def test_metrics_port_counts_requests_and_tokens_by_model(make_cluster):
    cluster = await make_cluster(metrics_port=0)
    reply = await cluster.generate(
        generate_request(prompt_input("count me", max_tokens=3), model="acme/fast")
    )
    served = reply.finished.usage.completion_tokens
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{cluster.router.metrics.port}/metrics")).text
    assert 'switchyard_router_requests_total{model="acme/fast",status="200"}' in text
    completion = next(
        line
        for line in text.splitlines()
        if line.startswith('switchyard_router_tokens_total{kind="completion",model="acme/fast"}')
    )
    assert float(completion.split()[-1]) >= served > 0
