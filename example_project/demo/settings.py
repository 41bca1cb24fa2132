"""Settings of the demo: the example site as it is, plus two things.

* Each response says how many requests it sent to the shared cache, in the
  ``X-Cache-Round-Trips`` header (see :mod:`demo.roundtrips`).
* ``SYNCACHE_DEMO_OFF=1`` switches syncache off, for contrast: it then
  coordinates through a ``LocMemCache``, private to each process, so every
  process sees only its own changes. That is a site keeping state in
  memory with no cross-process invalidation.
"""

from __future__ import annotations

import os

from demo.roundtrips import counted
from example.settings import *  # noqa: F403
from example.settings import CACHES, MIDDLEWARE, SYNCACHE

CACHES = {"default": counted(CACHES["default"])}
MIDDLEWARE = ["demo.roundtrips.RoundTripMiddleware", *MIDDLEWARE]
ROOT_URLCONF = "demo.urls"

if os.environ.get("SYNCACHE_DEMO_OFF") == "1":
    CACHES["per-process"] = {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "syncache-demo-off",
    }
    SYNCACHE = {**SYNCACHE, "CACHE_ALIAS": "per-process"}
    # "The cache is private to one process": that is the point here.
    SILENCED_SYSTEM_CHECKS = ["syncache.W001"]
