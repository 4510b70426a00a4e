"""python -m services.router: the router alone, configured by SWITCHYARD_ROUTER_* variables."""

from services.common.runtime import configure_logging, run
from services.router.server import serve
from services.router.settings import RouterSettings


def main() -> None:
    settings = RouterSettings()
    configure_logging(settings.log_level, settings.log_json)
    run(serve(settings))


if __name__ == "__main__":
    main()
