"""`switchyard keys create|list|revoke|top-up`: key administration from a shell, straight on the
database (the router need not run). `services.cli` calls `register(subparsers)`.

    switchyard keys create --name ci --credits 100 --rpm 60 --allowed-model meta/llama-3.1-8b
    switchyard keys list [--all]
    switchyard keys revoke key_0123abcd...
    switchyard keys top-up key_0123abcd... 50

`create` prints the key alone on stdout (for KEY=$(switchyard keys create ...)) and the rest on
stderr; it is shown this once. Every command takes --database URL (default: the router's,
$SWITCHYARD_ROUTER_ACCOUNTING__DATABASE_URL or ./var/switchyard.db) and migrates it first.
A running router sees a revocation within its key cache lifetime (key_cache_seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable

from services.common.errors import ServiceError
from services.router.accounting import migrations
from services.router.accounting.database import Database
from services.router.accounting.keys import KeyPolicy, KeyRecord, KeyStore
from services.router.accounting.pricing import nanocredits_to_credits
from services.router.accounting.settings import DATABASE_URL_ENV, database_url_from, default_database_url

# What `switchyard up --api-key KEY` gives its key: enough that local use never runs out.
AMPLE_CREDITS = 1_000_000.0


def register(subparsers: argparse._SubParsersAction) -> None:
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--database",
        default=None,
        metavar="URL_OR_PATH",
        type=database_url_from,
        help=f"SQLAlchemy async URL or SQLite file (default: ${DATABASE_URL_ENV} or ./var/switchyard.db)",
    )
    keys = subparsers.add_parser("keys", help="create, list, revoke and top up API keys")
    commands = keys.add_subparsers(dest="keys_command", required=True)

    create = commands.add_parser("create", parents=[database], help="create a key (shown once)")
    create.add_argument("--name", required=True)
    create.add_argument("--credits", type=float, default=0.0, help="initial credits (default 0)")
    create.add_argument(
        "--allowed-model",
        action="append",
        default=[],
        dest="allowed_models",
        metavar="MODEL",
        help="a model the key may use (repeatable; an id without :version allows all versions; default: all)",
    )
    create.add_argument("--rpm", type=int, help="requests per minute (default: no limit)")
    create.add_argument("--tpm", type=int, help="tokens per minute (default: no limit)")
    create.add_argument("--max-concurrent", type=int, help="concurrent requests (default: no limit)")
    create.add_argument(
        "--reveal-model-names", action="store_true", help="name real models instead of 'redacted'"
    )
    create.add_argument("--admin", action="store_true", help="may read every key's usage and administer keys")
    create.set_defaults(func=_command(_create))

    listing = commands.add_parser("list", parents=[database], help="list keys (never their secrets)")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    listing.set_defaults(func=_command(_list))

    revoke = commands.add_parser("revoke", parents=[database], help="revoke a key")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=_command(_revoke))

    top_up = commands.add_parser("top-up", parents=[database], help="add credits to a key")
    top_up.add_argument("key_id")
    top_up.add_argument("credits", type=float)
    top_up.set_defaults(func=_command(_top_up))


def ensure_api_key(secret: str, *, database_url: str | None = None, credits: float = AMPLE_CREDITS) -> str:
    """Makes sure the key `secret` exists, unrevoked, with at least `credits`, as an admin key (the
    operator's own key for `switchyard up --api-key`: it may read every key's usage and administer
    keys). Model names stay redacted for it, as for everyone, unless the router reveals them to all
    (`switchyard up --reveal-model-names`). Returns its id."""

    async def ensure(store: KeyStore) -> KeyRecord:
        policy = KeyPolicy(name="switchyard up", admin=True)
        return await store.ensure(secret, policy, credits=credits)

    return asyncio.run(_with_store(database_url or default_database_url(), ensure)).key_id


async def _with_store(url: str, action: Callable[[KeyStore], Awaitable]):
    database = Database(url)
    try:
        await migrations.upgrade(database)
        return await action(KeyStore(database))
    finally:
        await database.dispose()


def _command(
    action: Callable[[KeyStore, argparse.Namespace], Awaitable[None]],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            asyncio.run(
                _with_store(args.database or default_database_url(), lambda store: action(store, args))
            )
        except ServiceError as error:
            print(f"error: {error.message}", file=sys.stderr)
            return 1
        return 0

    return run


async def _create(store: KeyStore, args: argparse.Namespace) -> None:
    policy = KeyPolicy(
        name=args.name,
        allowed_models=tuple(args.allowed_models),
        requests_per_minute=args.rpm,
        tokens_per_minute=args.tpm,
        max_concurrent_requests=args.max_concurrent,
        reveal_model_names=args.reveal_model_names,
        admin=args.admin,
    )
    record, secret = await store.create(policy, credits=args.credits)
    print(secret, flush=True)
    print(
        f"created {record.key_id} ({record.principal.name}, {record.prefix}…) with "
        f"{nanocredits_to_credits(record.balance_nanocredits):g} credits; the key above is shown only now",
        file=sys.stderr,
    )


async def _list(store: KeyStore, args: argparse.Namespace) -> None:
    rows = [
        (
            "ID",
            "NAME",
            "PREFIX",
            "CREDITS",
            "RPM",
            "TPM",
            "CONCURRENT",
            "MODELS",
            "FLAGS",
            "CREATED",
            "REVOKED",
        )
    ]
    for record in await store.list(show_revoked=args.all):
        p = record.principal
        flags = ",".join(f for f, on in (("admin", p.admin), ("reveal-names", p.reveal_model_names)) if on)
        rows.append(
            (
                record.key_id,
                p.name,
                record.prefix + "…",
                f"{nanocredits_to_credits(record.balance_nanocredits):.6f}",
                _limit(p.requests_per_minute),
                _limit(p.tokens_per_minute),
                _limit(p.max_concurrent_requests),
                ",".join(sorted(p.allowed_models)) or "all",
                flags or "-",
                record.created_at.strftime("%Y-%m-%d %H:%M"),
                record.revoked_at.strftime("%Y-%m-%d %H:%M") if record.revoked_at else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)


async def _revoke(store: KeyStore, args: argparse.Namespace) -> None:
    record = await store.revoke(args.key_id)
    print(f"revoked {record.key_id} ({record.principal.name})")


async def _top_up(store: KeyStore, args: argparse.Namespace) -> None:
    record = await store.top_up(args.key_id, args.credits)
    print(f"{record.key_id} now has {nanocredits_to_credits(record.balance_nanocredits):.6f} credits")
