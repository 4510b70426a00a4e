"""What the edge's routes reach through `app.state.edge`, made once in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from services.edge.router_client import RouterClient
from services.edge.serving_accounts import AccountsServing
from services.edge.serving_chat import ChatServing
from services.edge.serving_completion import CompletionServing
from services.edge.serving_models import ModelsServing
from services.edge.settings import EdgeSettings


@dataclass(frozen=True, slots=True)
class EdgeState:
    settings: EdgeSettings
    router: RouterClient
    completions: CompletionServing
    chat: ChatServing
    models: ModelsServing
    accounts: AccountsServing

    @classmethod
    def from_settings(cls, settings: EdgeSettings) -> EdgeState:
        """Opens the channel to the router (lazily: nothing is dialled until the first call)."""
        router = RouterClient(settings.router_address)
        return cls(
            settings=settings,
            router=router,
            completions=CompletionServing(router),
            chat=ChatServing(router),
            models=ModelsServing(router, grpc_timeout=settings.control_timeout_seconds),
            accounts=AccountsServing(router, grpc_timeout=settings.control_timeout_seconds),
        )
