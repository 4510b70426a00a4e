"""python -m services.engine: one engine process, configured from SWITCHYARD_ENGINE_* (see settings.py)."""

from services.common.runtime import configure_logging, run
from services.engine.server import serve
from services.engine.settings import EngineSettings


def main() -> None:
    settings = EngineSettings()
    configure_logging(settings.log_level, settings.log_json)
    run(serve(settings))


if __name__ == "__main__":
    main()
