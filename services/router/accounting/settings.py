"""Settings of the router's state layer. A plain model, nested in the router's settings as
`accounting`, so its environment variables read SWITCHYARD_ROUTER_ACCOUNTING__<FIELD>."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Where the `switchyard keys` command and `switchyard up` find the database when --database is not
# given: the same variable the router reads through its nested settings.
DATABASE_URL_ENV = "SWITCHYARD_ROUTER_ACCOUNTING__DATABASE_URL"


def database_url_from(value: str) -> str:
    """A SQLAlchemy URL as given, or a plain file path as the SQLite URL of that file."""
    if "://" in value:
        return value
    return f"sqlite+aiosqlite:///{Path(value).expanduser().resolve()}"


def default_database_url() -> str:
    """$SWITCHYARD_ROUTER_ACCOUNTING__DATABASE_URL, else an SQLite file in ./var/.

    The embedded database is state (balances, the ledger), not a cache, so it does not live under
    SWITCHYARD_CACHE_DIR, which people delete freely; ./var/ is git-ignored and is where `make up`
    runs from.
    """
    configured = os.environ.get(DATABASE_URL_ENV)
    if configured:
        return database_url_from(configured)
    return f"sqlite+aiosqlite:///{Path('var').resolve() / 'switchyard.db'}"


class AccountingSettings(BaseModel):
    """Keys, credits, rate limits, the request log and the response cache."""

    # A misspelt SWITCHYARD_ROUTER_ACCOUNTING__* variable is an error, not a silent default.
    model_config = ConfigDict(extra="forbid")

    # Off: the router opens no database and serves every caller without a key, bills nothing, logs no
    # requests and caches no responses. For deployments that authenticate and bill elsewhere, and for
    # measuring what accounting costs (bench.accounting).
    enabled: bool = True
    # SQLAlchemy async URL: sqlite+aiosqlite:///path (one router) or postgresql+asyncpg://... (many).
    database_url: str = Field(default_factory=default_database_url)

    @field_validator("database_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return database_url_from(value)

    # Apply the Alembic migrations (upgrade head) when the router starts.
    migrate_on_start: bool = True
    # Names this router's credit leases, so that a restart releases the ones its previous run left
    # open. Must differ between routers sharing a database (a pod name, a host name).
    instance_name: str = Field(default_factory=socket.gethostname)
    # A router releases other routers' leases not refreshed for this long (their router is gone).
    # A live router refreshes every lease it holds a quarter of this often (and whenever it writes
    # a lease's charges), however long the requests on it run, so this need not exceed the request
    # timeout; keep it well above a few seconds of clock skew between the routers' hosts. Short,
    # because a crashed router whose restart has a new instance_name (a Kubernetes Deployment's
    # pod) never releases its own leases: its keys' credits stay out of reach this long.
    reservation_max_age_seconds: float = Field(default=120.0, gt=0.0)
    # How often leases older than reservation_max_age_seconds are swept.
    reconcile_interval_seconds: float = 60.0
    # Credit leases (leases.py): a router takes up to this much of a key's balance at once (more if
    # one request's hold needs it) and draws requests' holds from it in memory. Larger: fewer
    # database writes; smaller: less of a key's balance out of other routers' reach meanwhile.
    credit_lease_credits: float = Field(default=1.0, ge=0.0)
    # A lease no request has drawn from for this long goes back to the key's balance.
    credit_lease_idle_seconds: float = Field(default=2.0, ge=0.0)
    # How often the charges of finished requests are written, in one transaction. A crash loses
    # the charges of at most this long (not billed, like the requests it interrupts).
    settlement_interval_seconds: float = Field(default=0.1, gt=0.0)
    # Key checks are answered from memory this long, keeping the database off the hot path; a key
    # revoked on another router (or with the CLI) still works here for at most this long.
    key_cache_seconds: float = 5.0
    key_cache_size: int = 10_000
    # The request log: entries wait in a bounded queue and are written in batches; a full queue
    # drops entries (counted in switchyard_request_log_dropped_total, exposed on the router's metrics
    # port, SWITCHYARD_ROUTER_METRICS_PORT; never silently).
    log_queue_size: int = 10_000
    log_batch_size: int = 500
    # The longest an entry waits for its batch to fill before it is written anyway.
    log_max_linger_seconds: float = 0.5
    # Exact-match cache of deterministic responses (temperature 0 or a seed), in memory.
    response_cache: bool = True
    response_cache_max_bytes: int = 64 * 1024 * 1024
    response_cache_ttl_seconds: float = 300.0
    # What a cache hit costs, as a fraction of the model's price for the same usage (0: free).
    cached_response_price_factor: float = Field(default=0.0, ge=0.0)
    # SQLite only: how long a writer waits for the database lock before failing.
    sqlite_busy_timeout_seconds: float = 30.0
