"""Redis connection: the URL in settings (one server, or a cluster), or an embedded redis-server with data in
a local folder.

Timeouts are short on purpose: the request path falls back to the in-memory graph snapshot when Redis is slow
or gone, so a long wait would only add latency. The client never re-sends a command by itself (no
``Retry``): a command that timed out may still run, and re-sending it blindly is how a write got stored twice.
Writes are idempotent scripts instead (service/idempotency.py), and reads fall back. Reconnection is
automatic (redis-py reconnects a dropped connection on the next command), so the service recovers without a
restart when Redis comes back."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.embedded_redis import EmbeddedRedis

log = logging.getLogger("edgerec.redis")

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

Client = aioredis.Redis | RedisCluster


@dataclass
class RedisHandle:
    client: Client
    url: str
    embedded: EmbeddedRedis | None = field(default=None, repr=False)

    async def close(self) -> None:
        await self.client.aclose()
        if self.embedded is not None:
            self.embedded.stop()  # SHUTDOWN: the AOF is complete on disk, the process gone
            self.embedded = None


def cluster_url(url: str) -> str | None:
    """``redis+cluster://host:port`` (or ``rediss+cluster://``): the plain URL of a seed node; else None."""
    scheme, sep, rest = url.partition("://")
    return f"{CLUSTER_SCHEMES[scheme]}://{rest}" if sep and scheme in CLUSTER_SCHEMES else None


def make_client(url: str, timeout_s: float, max_connections: int = 64) -> Client:
    """A client for ``url``: a Redis Cluster client for a ``redis+cluster://`` URL, else an asyncio client
    over a blocking pool (under a burst, requests wait up to the timeout for one of ``max_connections``
    connections instead of opening hundreds). Either way no command is ever re-sent by the client."""
    no_retry = Retry(NoBackoff(), 0)
    seed = cluster_url(url)
    if seed is not None:
        return RedisCluster.from_url(
            seed,
            max_connections=max_connections,  # per node
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=no_retry,
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=no_retry,
        health_check_interval=30,
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool and closes it with itself


def open_redis(url: str | None, timeout_s: float, data_dir: Path) -> RedisHandle:
    """Connect lazily to ``url``; without one, start the embedded server first (blocking, ~0.1 s)."""
    if url:
        return RedisHandle(client=make_client(url, timeout_s), url=url)
    server = EmbeddedRedis(data_dir).start()
    log.info("started embedded redis", extra={"redis_url": server.url, "data_dir": str(data_dir)})
    return RedisHandle(client=make_client(server.url, timeout_s), url=server.url, embedded=server)
