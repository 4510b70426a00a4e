"""python -m services.edge: the edge alone, configured by SWITCHYARD_EDGE_* environment variables."""

from __future__ import annotations

from services.common.runtime import configure_logging, run
from services.edge.server import serve
from services.edge.settings import EdgeSettings


def main() -> None:
    settings = EdgeSettings()
    configure_logging(settings.log_level, settings.log_json)
    run(serve(settings))


if __name__ == "__main__":
    main()
