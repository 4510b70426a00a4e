"""The router as its own process and its settings from the environment."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import grpc
import pytest
from pydantic import ValidationError

from services.router.accounting import Accounting, AccountingSettings, KeyPolicy
from services.router.settings import RouterSettings
from switchyard.router.v1 import router_service_pb2 as router_pb2
from switchyard.router.v1 import router_service_pb2_grpc as router_grpc
from tests.router.conftest import MODELS, registry_yaml


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("SWITCHYARD_ROUTER_PORT", "6001")
    monkeypatch.setenv("SWITCHYARD_ROUTER_REPLICAS__POLICY", "least_loaded")
    monkeypatch.setenv("SWITCHYARD_ROUTER_SELECTION__BALANCED_BASE", "0.4")
    monkeypatch.setenv("SWITCHYARD_ROUTER_RETRY__MAX_ATTEMPTS", "7")
    monkeypatch.setenv("SWITCHYARD_ROUTER_ACCOUNTING__DATABASE_URL", "sqlite+aiosqlite:///state.db")
    monkeypatch.setenv("SWITCHYARD_ROUTER_ACCOUNTING__KEY_CACHE_SECONDS", "2")
    settings = RouterSettings()
    assert settings.port == 6001
    assert settings.replicas.policy == "least_loaded"
    assert settings.selection.quality_needed("balanced", 1.0) == 1.0
    assert settings.selection.quality_needed("balanced", 0.5) == 0.4 + 0.6 * 0.5
    assert settings.retry.max_attempts == 7
    assert settings.accounting.enabled
    assert settings.accounting.database_url == "sqlite+aiosqlite:///state.db"
    assert settings.accounting.key_cache_seconds == 2
    assert settings.reveal_model_names is False
    assert settings.registry_path.name == "models.yaml" and settings.registry_path.exists()


def test_the_retired_reveal_key_hashes_setting_is_refused_saying_what_replaced_it(monkeypatch):
    monkeypatch.setenv("SWITCHYARD_ROUTER_REVEAL_KEY_HASHES", '["ab12"]')
    with pytest.raises(ValidationError) as caught:
        RouterSettings()
    assert "--reveal-model-names" in str(caught.value)


def test_a_misspelt_accounting_setting_is_refused(monkeypatch):
    monkeypatch.setenv("SWITCHYARD_ROUTER_ACCOUNTING__DATABASE_ULR", "sqlite+aiosqlite:///x.db")
    with pytest.raises(ValidationError):
        RouterSettings()


async def test_python_m_services_router_serves_and_drains_on_sigterm(tmp_path):
    registry = tmp_path / "models.yaml"
    registry.write_text(registry_yaml(MODELS, {spec.id: ["127.0.0.1:1"] for spec in MODELS}))
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"
    setup = Accounting(AccountingSettings(database_url=database_url, instance_name="setup"))
    await setup.start()
    _, secret = await setup.keys.create(KeyPolicy(name="process-test"))
    await setup.close()
    env = {
        **os.environ,
        "SWITCHYARD_ROUTER_PORT": "0",
        "SWITCHYARD_ROUTER_REGISTRY_PATH": str(registry),
        "SWITCHYARD_ROUTER_DRAIN_GRACE_SECONDS": "1",
        "SWITCHYARD_ROUTER_ACCOUNTING__DATABASE_URL": database_url,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.router", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        port = None
        async with asyncio.timeout(30):
            while port is None:
                line = (await process.stderr.readline()).decode()
                assert line, "the router exited before serving"
                if match := re.search(r"router serving on [\d.]+:(\d+)", line):
                    port = int(match.group(1))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = router_grpc.RouterServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListModels(router_pb2.ListModelsRequest())
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            listed = await stub.ListModels(
                router_pb2.ListModelsRequest(), metadata=(("authorization", f"Bearer {secret}"),)
            )
        assert [model.id for model in listed.models] == [spec.id for spec in MODELS]
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
