"""GET /v1/models and GET /v1/models/{id}: the router's registry as OpenAI model objects."""

from __future__ import annotations

from starlette.responses import Response

from services.edge.context import RequestContext
from services.edge.router_client import RouterClient
from services.edge.serving import json_response
from services.edge.translate import model_object


class ModelsServing:
    def __init__(self, router: RouterClient, *, grpc_timeout: float) -> None:
        self._router = router
        self._timeout = grpc_timeout

    async def list(self, ctx: RequestContext) -> Response:
        models = await self._router.list_models(
            metadata=ctx.metadata(), grpc_timeout=min(self._timeout, ctx.timeout)
        )
        return json_response({"object": "list", "data": [model_object(model) for model in models]})

    async def retrieve(self, model_id: str, ctx: RequestContext) -> Response:
        model = await self._router.get_model(
            model_id, metadata=ctx.metadata(), grpc_timeout=min(self._timeout, ctx.timeout)
        )
        return json_response(model_object(model))
