"""One error shape for the whole API, `{"error": {"code", "message", ...}}`, one handler each."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from retrieval.errors import LabelrankError
from service.results import ItemError

log = logging.getLogger("labelrank.api")


def error_of(item: ItemError) -> LabelrankError:
    """The typed error behind an error record (its code picks the class, hence the status)."""
    classes, stack = {}, [LabelrankError]
    while stack:
        cls = stack.pop()
        classes[cls.code] = cls
        stack.extend(cls.__subclasses__())
    data = dict(item.error)
    code, message = str(data.pop("code", "")), str(data.pop("message", "error"))
    return classes.get(code, LabelrankError)(message, **data)


HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
              413: "payload_too_large", 415: "unsupported_media_type"}


def install_error_handlers(app: FastAPI) -> None:
    """One error shape, `{"error": {"code", "message", ...}}`, for every failure."""

    @app.exception_handler(LabelrankError)
    async def labelrank_error(request: Request, exc: LabelrankError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.to_dict()}, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [str(part) for part in err.get("loc", ())], "msg": err.get("msg", ""),
                   "type": err.get("type", "")} for err in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        message = f"{'.'.join(first['loc']) or 'request'}: {first['msg']}"
        return JSONResponse({"error": {"code": "invalid_request", "message": message,
                                       "detail": errors}}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names only the first route's methods
            headers["Allow"] = ", ".join(_allowed_methods(app, request.url.path))
        if exc.status_code == 413:  # the body may be unread: do not reuse the connection
            headers["Connection"] = "close"
        return JSONResponse({"error": {"code": code, "message": str(exc.detail)}},
                            status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": {"code": "internal_error",
                                       "message": "internal error; see the server log"}},
                            status_code=500)


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    methods: set[str] = set()
    for route in app.routes:
        if isinstance(route, APIRoute) and route.path_regex.match(path):
            methods |= route.methods
    return sorted(methods)
