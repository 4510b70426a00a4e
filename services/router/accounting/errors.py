"""Errors of the state layer that services.common.errors has no type for."""

from __future__ import annotations

import grpc

from services.common.errors import ServiceError


class NotFoundError(ServiceError):
    """A key or logged request that does not exist, or that the caller may not see (the two are
    indistinguishable on purpose). NOT_FOUND without a reason: the inference contract's reasons
    name models only."""

    code = grpc.StatusCode.NOT_FOUND
