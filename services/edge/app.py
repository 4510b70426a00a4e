"""create_app(settings) -> FastAPI: the public OpenAI-compatible API (see ARCHITECTURE.md)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from services.edge import routes
from services.edge.errors import ApiError
from services.edge.middleware import RequestIdMiddleware
from services.edge.settings import EdgeSettings
from services.edge.state import EdgeState

logger = logging.getLogger(__name__)


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return error.response()


async def _http_error(request: Request, error: Exception) -> Response:
    """Unknown routes (404) and wrong methods (405) as OpenAI error objects."""
    assert isinstance(error, HTTPException)
    if error.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif error.status_code == 405:
        message = f"Method {request.method} is not allowed for {request.url.path}."
    else:
        message = HTTPStatus(error.status_code).phrase
    error_type = "server_error" if error.status_code >= 500 else "invalid_request_error"
    return ApiError(error.status_code, message, type=error_type, headers=error.headers).response()


async def _validation_error(request: Request, error: Exception) -> Response:
    # Bodies are parsed by the servings; this catches path and header parameters.
    assert isinstance(error, RequestValidationError)
    return ApiError(400, f"Invalid request: {error.errors()[0]['msg']}.").response()


def create_app(settings: EdgeSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.edge = EdgeState.from_settings(settings)
        logger.info("edge serving the OpenAI API, router at %s", settings.router_address)
        try:
            yield
        finally:
            await app.state.edge.router.close()

    # The contract is OpenAI's API; no generated docs beside it on a public port.
    # redirect_slashes off: OpenAI answers a path with a trailing slash with 404, not a 307 redirect
    # (which clients would follow without the key, and which answers before authentication).
    app = FastAPI(
        title="Switchyard edge",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,
    )
    app.include_router(routes.router)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(RequestIdMiddleware)
    return app
