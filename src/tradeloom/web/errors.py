"""The JSON error model, and the one place errors become HTTP answers.

Every error the API answers has the body ``{"error": {"code", "message", "details"}}``:
``code`` is machine-readable and stable (clients branch on it), ``message`` is for people,
``details`` is null or structured (for a validation error, a list of
``{"field", "location", "message", "type"}``, one per offending field path).

* Malformed JSON: 400 ``malformed_json``; a body that is not JSON at all: 415
  ``unsupported_media_type``; wrong types, missing or unknown fields: 422
  ``validation_failed``. Bad input never becomes a 500.
* A :class:`~tradeloom.domain.errors.DomainError` answers with its own ``code`` and the status
  of the first class in :data:`DOMAIN_STATUS` it is an instance of (400 if none), or of its code
  in :data:`CODE_STATUS`.
* :class:`ApiError` is what the web tier raises itself (401, 403, 429, ...).
* Anything else is a bug: 500 ``internal_error``, logged with its traceback, nothing leaked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tradeloom.broker.adapter import BrokerTimeout, BrokerUnavailable
from tradeloom.domain.accounts import DuplicateAccount, InvalidAccount
from tradeloom.domain.errors import DomainError, IllegalTransition, InvalidNumber, InvalidOrder
from tradeloom.domain.market import InvalidInstrument
from tradeloom.oms.commands import OrderNotFound, OrderNotOpen
from tradeloom.oms.repository import DuplicateClientOrderId
from tradeloom.resilience.circuit_breaker import CircuitOpen
from tradeloom.risk import errors as risk_errors
from tradeloom.risk.errors import RiskRejected
from tradeloom.risk.limits import InvalidLimits
from tradeloom.risk.units import OutOfRange
from tradeloom.users.model import (
    DuplicateUser,
    InvalidCredentials,
    InvalidPassword,
    InvalidUsername,
    TokenLimitReached,
    TokenNotFound,
    UserDisabled,
    UserNotFound,
)
from tradeloom.web.request_context import (
    CORRELATION_HEADER,
    bound_correlation_id,
    request_log_context,
)

log = structlog.get_logger("tradeloom.web")

DOMAIN_STATUS: Sequence[tuple[type[DomainError], int]] = (
    (InvalidCredentials, 401),
    (UserDisabled, 403),
    (UserNotFound, 404),
    (TokenNotFound, 404),
    (OrderNotFound, 404),
    (DuplicateUser, 409),
    (DuplicateAccount, 409),
    (DuplicateClientOrderId, 409),
    (OrderNotOpen, 409),
    (IllegalTransition, 409),
    (TokenLimitReached, 409),
    (InvalidUsername, 422),
    (InvalidPassword, 422),
    (InvalidAccount, 422),
    (InvalidLimits, 422),
    (InvalidNumber, 422),
    (InvalidOrder, 422),
    (InvalidInstrument, 422),
    (OutOfRange, 422),
    (RiskRejected, 422),
    (BrokerUnavailable, 503),
    (CircuitOpen, 503),
    (BrokerTimeout, 504),
)
CODE_STATUS: Mapping[str, int] = {risk_errors.UNAVAILABLE: 503}

_HTTP_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


class ApiError(Exception):
    """An error answer the web tier decided on itself."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = dict(headers or {})


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def status_for(error: DomainError) -> int:
    if error.code in CODE_STATUS:
        return CODE_STATUS[error.code]
    for kind, status in DOMAIN_STATUS:
        if isinstance(error, kind):
            return status
    return 400


def validation_details(errors: Sequence[Any]) -> list[dict[str, str]]:
    """One entry per error, with its field path (``limits.order_rate``, ``items.0.price``)."""
    details = []
    for error in errors:
        location, *path = [str(part) for part in error.get("loc", ())] or ["body"]
        details.append(
            {
                "field": ".".join(path) or location,
                "location": location,
                "message": str(error.get("msg", "")),
                "type": str(error.get("type", "")),
            }
        )
    return details


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    malformed = [e for e in errors if e.get("type") == "json_invalid"]
    if malformed:
        reason = str(malformed[0].get("ctx", {}).get("error", "invalid JSON"))
        position = malformed[0]["loc"][-1]
        return error_response(
            400, "malformed_json", f"the body is not valid JSON: {reason} at {position}"
        )
    if any(e.get("loc", ())[:1] == ("body",) and isinstance(e.get("input"), bytes) for e in errors):
        return error_response(415, "unsupported_media_type", "send the body as application/json")
    details = validation_details(errors)
    fields = ", ".join(sorted({d["field"] for d in details}))
    return error_response(422, "validation_failed", f"invalid request: {fields}", details)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return error_response(exc.status_code, code, str(exc.detail), None, exc.headers)


async def _domain_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return error_response(status_for(exc), exc.code, exc.message)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Runs outside the request's middleware, after its log context was reset: bind it again.
    with request_log_context(request):
        log.error("web.unhandled_error", path=request.url.path, exc_info=exc)
    # The middleware that adds the header is inside this handler's: add it here, so the
    # client can quote the id the log line carries.
    correlation_id = bound_correlation_id(request)
    headers = None if correlation_id is None else {CORRELATION_HEADER: correlation_id}
    return error_response(500, "internal_error", "an unexpected error occurred", None, headers)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` in the JSON error model."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(Exception, _unexpected_error)
