"""python -m services.router.accounting.migrations upgrade|downgrade|current|history [REVISION]
[--database URL]: the router's migrations by hand (the router also upgrades to head at start)."""

from __future__ import annotations

import argparse
import asyncio

from services.router.accounting.database import Database
from services.router.accounting.migrations import run
from services.router.accounting.settings import default_database_url


async def _main(args: argparse.Namespace) -> None:
    database = Database(args.database)
    try:
        await run(database, args.action, args.revision)
    finally:
        await database.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.router.accounting.migrations")
    parser.add_argument("action", choices=["upgrade", "downgrade", "current", "history"])
    parser.add_argument("revision", nargs="?", help="target of upgrade (default head) or downgrade")
    parser.add_argument("--database", default=default_database_url(), help="SQLAlchemy async URL")
    args = parser.parse_args()
    if args.action == "upgrade" and args.revision is None:
        args.revision = "head"
    if args.action == "downgrade" and args.revision is None:
        parser.error("downgrade needs a target revision (e.g. base or -1)")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
