"""The engine's load, read from vLLM's own scheduler.

vLLM's engine core sends its scheduler's stats (running and waiting requests, KV-cache usage,
prefix-cache queries and hits) with every step's outputs; AsyncLLM hands them to its stat loggers.
`LoadTracker` is such a logger that keeps the latest figures, so a load report costs no RPC into
the engine core.
"""

from __future__ import annotations

from vllm.config import VllmConfig
from vllm.v1.metrics.loggers import StatLoggerBase
from vllm.v1.metrics.stats import CachingMetrics, IterationStats, SchedulerStats

from switchyard.engine.v1 import engine_service_pb2 as engine_pb2

# The prefix-cache hit rate covers this many recent requests, as vLLM's own logging does.
_HIT_RATE_WINDOW_REQUESTS = 1000


class LoadTracker(StatLoggerBase):
    def __init__(self, vllm_config: VllmConfig, engine_index: int = 0) -> None:
        self._scheduler = SchedulerStats()
        self._prefix_cache = CachingMetrics(max_recent_requests=_HIT_RATE_WINDOW_REQUESTS)

    def record(
        self,
        scheduler_stats: SchedulerStats | None,
        iteration_stats: IterationStats | None,
        mm_cache_stats: object | None = None,
        engine_idx: int = 0,
    ) -> None:
        if scheduler_stats is not None:
            self._scheduler = scheduler_stats
            self._prefix_cache.observe(scheduler_stats.prefix_cache_stats)

    def log_engine_initialized(self) -> None:
        pass

    def report(self, *, unfinished_requests: int, serving: bool) -> engine_pb2.GetLoadResponse:
        """The load now. The scheduler only reports while it steps, so its last figures go stale
        once the engine falls idle (say, after an abort): with no unfinished request in the
        frontend, nothing runs, waits or holds KV blocks."""
        stats = self._scheduler
        idle = unfinished_requests == 0
        return engine_pb2.GetLoadResponse(
            running_requests=0 if idle else stats.num_running_reqs,
            waiting_requests=0 if idle else stats.num_waiting_reqs + stats.num_skipped_waiting_reqs,
            kv_cache_usage=0.0 if idle else stats.kv_cache_usage,
            prefix_cache_hit_rate=self._prefix_cache.hit_rate,
            serving=serving,
        )
