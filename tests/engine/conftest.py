"""Fixtures: one default sim engine on a real gRPC port, shared by the tests that only read from it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.engine.engine_client import EngineClient, running_engine


@pytest.fixture(scope="session")
async def engine() -> AsyncIterator[EngineClient]:
    async with running_engine() as client:
        yield client
