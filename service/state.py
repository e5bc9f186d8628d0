"""What one running app holds: settings, Redis, cache, metrics, the served model and the recommender."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from service.cache import Cache
from service.catalogue import Catalogue
from service.config import Settings
from service.metrics import Metrics
from service.recommender import Recommender
from service.redis_conn import RedisHandle
from service.serving import ModelHolder


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    redis: RedisHandle
    cache: Cache
    holder: ModelHolder
    recommender: Recommender
    warm_task: asyncio.Task | None = None  # background cache warming (service.warmer)
    catalogue: Catalogue | None = None  # items added/withdrawn since training (service.catalogue)
