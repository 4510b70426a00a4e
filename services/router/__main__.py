"""python -m services.router: the router alone, configured by SWITCHYARD_ROUTER_* variables."""

import logging
import sys

from services.common.runtime import configure_logging, run
from services.router.registry import RegistryError
from services.router.server import serve
from services.router.settings import RouterSettings


def main() -> None:
    settings = RouterSettings()
    configure_logging(settings.log_level, settings.log_json)
    try:
        run(serve(settings))
    except RegistryError as error:
        # A configuration mistake, not a crash: say what to fix, without a traceback.
        logging.getLogger("services.router").error("%s (SWITCHYARD_ROUTER_REGISTRY_PATH)", error)
        sys.exit(2)


if __name__ == "__main__":
    main()
