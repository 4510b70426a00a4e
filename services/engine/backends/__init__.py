"""Generation backends behind EngineService. Only the chosen backend is imported: the vLLM one pulls
in vLLM and torch, which a simulated engine never needs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.engine.backends.base import GenerationBackend

if TYPE_CHECKING:
    from services.engine.settings import EngineSettings


def create_backend(settings: EngineSettings) -> GenerationBackend:
    if settings.backend == "sim":
        from services.engine.backends.sim import SimBackend

        return SimBackend(settings.sim, served_model_name=settings.served_model_name)
    if settings.backend == "vllm":
        from services.engine.backends.vllm import VllmBackend

        return VllmBackend(settings.vllm, served_model_name=settings.served_model_name)
    raise ValueError(f"unknown engine backend {settings.backend!r}")
