"""Benchmark: a group-cached page hit against Django's ``cache_page`` hit.

Both views are called in-process with one ``RequestFactory`` request, on the
same Redis-backed ``default`` cache (``python -m tests.benchmarks``
configures it). Django's hit reads the header list, then the page: two
round trips. The group-cached hit reads the group's version together with
the header list (one ``MGET``), then the page: two round trips too, so the
target is the CPU of computing the group's key (<= 1.2x).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: A page-sized body: the unpickling of the response is part of both hits.
BODY = b"<p>cached</p>" * 400


def _round_trips(client: Any, operation: Callable[[], object]) -> int:
    """Commands the Redis server processed for one call (minus the INFO)."""
    before = int(client.info("stats")["total_commands_processed"])
    operation()
    return int(client.info("stats")["total_commands_processed"]) - before - 1


def rows(number: int, repeat: int) -> list[Any]:
    """Measure the hits; return ``Row`` objects for ``tests.benchmarks``."""
    from django.core.cache import caches
    from django.http import HttpRequest, HttpResponse
    from django.test import RequestFactory
    from django.views.decorators.cache import cache_page

    from syncache import Group, cache_versioned_page
    from tests.benchmarks.__main__ import Row, measure

    def view(request: HttpRequest, category: int, item: int) -> HttpResponse:
        return HttpResponse(BODY)

    grouped = cache_versioned_page(["category"], 3600)(view)
    plain = cache_page(3600, key_prefix="bench-plain")(view)
    request = RequestFactory().get("/bench/3/14/")

    def grouped_hit() -> object:
        return grouped(request, category=3, item=14)

    def plain_hit() -> object:
        return plain(request, category=3, item=14)

    cache = caches["default"]
    client = cache._cache.get_client(None, write=True)  # type: ignore[attr-defined]
    grouped_hit()
    plain_hit()
    assert grouped_hit().content == plain_hit().content == BODY
    grouped_trips = _round_trips(client, grouped_hit)
    plain_trips = _round_trips(client, plain_hit)

    group = Group("bench", category=3)
    group.set("value", BODY)
    cache.set("bench-raw", BODY)
    return [
        Row(
            f"group-cached page hit ({grouped_trips} round trips)",
            f"cache_page hit ({plain_trips})",
            measure(grouped_hit, number, repeat),
            measure(plain_hit, number, repeat),
            1.2,
        ),
        Row(
            "  Group.get() hit (reference)",
            "cache.get()",
            measure(lambda: group.get("value"), number, repeat),
            measure(lambda: cache.get("bench-raw"), number, repeat),
            None,
        ),
    ]
