"""Structured logs: one JSON object per line, every record stamped with the current request id.

The request id lives in a context variable that the request-id middleware sets, so any module's logger picks
it up without passing it around (works across ``await`` and ``run_in_executor`` via contextvars copying)."""

from __future__ import annotations

import logging
import random
import re
import sys
import time
from contextvars import ContextVar

import orjson

_rng = random.Random()  # seeded from os.urandom once
request_id_var: ContextVar[str | None] = ContextVar("edgerec_request_id", default=None)

# Accept a caller's X-Request-ID only when it is short and plain, so it cannot inject into logs or headers.
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# Standard record attributes are not copied as extra fields (uvicorn's color_message duplicates msg).
_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


def new_request_id(candidate: str | None = None) -> str:
    """The caller's id when it is well-formed, else a fresh random one."""
    if candidate and _REQUEST_ID_RE.match(candidate):
        return candidate
    # Request ids need uniqueness, not secrecy: the PRNG avoids a getrandom() syscall per request.
    return f"{_rng.getrandbits(128):032x}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            out["request_id"] = rid
        # Extra fields passed as logger.info(..., extra={...}) become top-level keys.
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        rid = request_id_var.get()
        base = super().format(record)
        return f"{base} [rid={rid}]" if rid else base


def configure_logging(level: str = "INFO", json_logs: bool = True) -> None:
    """Route edgerec's and uvicorn's loggers through one handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_logs else _PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    for name in ("edgerec", "service", "uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers = [handler]
        lg.setLevel(level.upper())
        lg.propagate = False
    # The service writes its own access log line with the request id; uvicorn's would duplicate it.
    logging.getLogger("uvicorn.access").disabled = True
