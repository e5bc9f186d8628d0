"""One pure-ASGI middleware for what every request needs: request id, body size limit, last-resort 500, access
log and the request-latency metric. Pure ASGI (not BaseHTTPMiddleware) because it sits on the hot path.

It is added last, so it wraps FastAPI's exception handling: it sees the final status of every response, and an
exception nothing else handled becomes a JSON 500 carrying the request id (never a stack trace)."""

from __future__ import annotations

import logging
import time

import orjson
from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logging import new_request_id, request_id_var
from service.metrics import Metrics

log = logging.getLogger("edgerec.http")


async def _send_json(send: Send, status: int, body: dict, rid: str) -> None:
    data = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"x-request-id", rid.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


class RequestContextMiddleware:
    def __init__(
        self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int, access_log: bool = True
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid_header = headers.get(b"x-request-id")
        rid = new_request_id(rid_header.decode("latin-1") if rid_header else None)
        request_id_var.set(rid)  # each request runs in its own task, so this never leaks into another request
        start = time.perf_counter()
        status = 500
        started = False
        limit = self.max_body_bytes

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        received = 0

        async def receive_wrapper() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException: FastAPI lets it through its body parsing, and its handler answers 413.
                    raise HTTPException(413, detail=f"request body larger than {limit} bytes")
            return message

        try:
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > limit):
                status = 413 if length.isdigit() else 400
                detail = f"request body larger than {limit} bytes" if status == 413 else "bad Content-Length"
                await _send_json(send, status, {"detail": detail, "request_id": rid}, rid)
                started = True
                return
            await self.app(scope, receive_wrapper, send_wrapper)
        except Exception:
            self.metrics.errors.labels("unhandled").inc()
            log.exception("unhandled error", extra={"path": scope.get("path")})
            if not started:
                status = 500
                await _send_json(send, 500, {"detail": "internal server error", "request_id": rid}, rid)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.request_seconds.labels(template, method, str(status)).observe(elapsed)
            if status >= 500:
                self.metrics.errors.labels("http_5xx").inc()
            if self.access_log:
                log.info(
                    "request",
                    extra={
                        "method": method,
                        "path": scope.get("path"),
                        "route": template,
                        "status": status,
                        "ms": round(elapsed * 1000, 2),
                    },
                )
