"""The router's state: API keys, credits, rate limits, the request log and the response cache.

The router servicer uses `Accounting` (see facade.py for the per-request calls); the router serves
`AccountsServicer` (service.py) beside RouterService; `switchyard keys ...` comes from cli.py.
"""

from services.router.accounting.facade import Accounting, Admission, Settlement, bearer_key
from services.router.accounting.keys import KeyPolicy, Principal
from services.router.accounting.pricing import FREE, Charge, Prices, max_completion_tokens
from services.router.accounting.request_log import RequestLogEntry
from services.router.accounting.response_cache import CachedResponse
from services.router.accounting.settings import AccountingSettings

__all__ = [
    "FREE",
    "Accounting",
    "AccountingSettings",
    "Admission",
    "CachedResponse",
    "Charge",
    "KeyPolicy",
    "Prices",
    "Principal",
    "RequestLogEntry",
    "Settlement",
    "bearer_key",
    "max_completion_tokens",
]
