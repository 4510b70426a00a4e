"""Prometheus exposition for a service: its own metrics port, off the serving port, so scraping
never competes with requests and the metrics are not public on the edge's API port."""

from __future__ import annotations

import logging
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

logger = logging.getLogger(__name__)


class MetricsServer:
    """The default registry at http://host:port/metrics, served from a daemon thread."""

    def __init__(self, host: str, port: int) -> None:
        self._httpd: WSGIServer
        self._httpd, _ = start_http_server(port, addr=host)
        self.port: int = self._httpd.server_address[1]
        logger.info("metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
