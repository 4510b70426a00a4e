"""Who may see real model names. Hosted routers answer "redacted" so that callers cannot reverse
engineer the routing; a key's `reveal_model_names` (or the router's global `reveal_model_names`
setting) names the exceptions (services.router.metering.Metering.reveals)."""

from __future__ import annotations

REDACTED = "redacted"
