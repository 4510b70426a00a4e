"""Operators scrape the edge's metrics port: requests by route template and status."""

from __future__ import annotations

import httpx

from services.edge.server import EdgeServer
from services.edge.settings import EdgeSettings


async def test_metrics_port_counts_requests_by_route_not_by_id():
    server = EdgeServer(EdgeSettings(port=0, router_address="127.0.0.1:1", metrics_port=0))
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            await http.get("/v1/requests/abc123", headers={"Authorization": "Bearer sy-x"})
            await http.get("/nowhere/at/all")
            text = (await http.get(f"http://127.0.0.1:{server.metrics.port}/metrics")).text
    finally:
        await server.stop(0)
    assert 'switchyard_edge_requests_total{path="/v1/requests/{id}"' in text
    assert 'switchyard_edge_requests_total{path="other",status="404"}' in text
    assert "abc123" not in text
