"""Benchmarks: syncache against a raw round trip to the same Redis server.

Run ``python -m tests.benchmarks`` (``--quick`` for a smoke run, ``--json
PATH`` to choose where the figures go). It starts its own redis-server on a
free port, measures every operation and its baseline in the same run, and
prints each as a ratio to its baseline. Targets are printed beside the
ratios; they are goals, not assertions.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class Row:
    name: str
    baseline: str
    seconds: float
    baseline_seconds: float
    target: float | None
    #: "us": the figures are seconds, printed in microseconds; anything else
    #: is a count printed as it is.
    unit: str = "us"

    @property
    def ratio(self) -> float:
        return self.seconds / self.baseline_seconds


def measure(operation: Callable[[], object], number: int, repeat: int) -> float:
    """Return the median time of one call, over ``repeat`` runs of ``number``."""
    for _ in range(max(1, number // 10)):
        operation()
    timings = []
    gc.disable()
    try:
        for _ in range(repeat):
            start = time.perf_counter()
            for _ in range(number):
                operation()
            timings.append((time.perf_counter() - start) / number)
    finally:
        gc.enable()
    return statistics.median(timings)


def configure(redis_url: str) -> None:
    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=["syncache"],
        ALLOWED_HOSTS=["testserver"],
        CACHES={
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": redis_url,
                "OPTIONS": {"socket_timeout": 1.0},
            }
        },
        SYNCACHE={"KEY_PREFIX": "bench"},
    )
    django.setup()


def run(number: int, repeat: int, redis_url: str) -> list[Row]:
    from django.core.cache import caches

    from syncache import GenerationSynchronizer, expired_many
    from syncache.medium import get_medium

    medium: Any = get_medium()
    client = caches["default"]._cache.get_client(None, write=True)  # type: ignore[attr-defined]
    client.set("raw:get", 1)
    rows = []

    def raw_get() -> object:
        return client.get("raw:get")

    get_time = measure(raw_get, number, repeat)
    incr_time = measure(lambda: client.incr("raw:incr"), number, repeat)

    sync = GenerationSynchronizer("bench")
    rows.append(
        Row(
            "is_expired()",
            "raw GET",
            measure(sync.is_expired, number, repeat),
            get_time,
            1.5,
        )
    )
    rows.append(
        Row(
            "mark_updated()",
            "raw INCR",
            measure(sync.mark_updated, number, repeat),
            incr_time,
            None,
        )
    )
    for count in (1, 10, 100, 1000):
        syncs = [GenerationSynchronizer(f"bench-{i}") for i in range(count)]
        expired_many(syncs)
        rows.append(
            Row(
                f"expired_many(N={count})",
                "raw GET",
                measure(lambda syncs=syncs: expired_many(syncs), number, repeat),
                get_time,
                2.0 if count == 100 else None,
            )
        )
        keys = [medium.full_key(s.cache_key) for s in syncs]
        rows.append(
            Row(
                f"  raw MGET of {count} keys (reference)",
                "raw GET",
                measure(lambda keys=keys: client.mget(keys), number, repeat),
                get_time,
                None,
            )
        )
    rows.extend(local_cache_rows(client, get_time, number, repeat))

    from tests.benchmarks import dogpile, groups, push, spinlock

    rows.extend(groups.rows(number, repeat))
    rows.extend(dogpile.rows(number, repeat))
    rows.extend(spinlock.rows(number, repeat))
    rows.extend(push.rows(number, repeat, redis_url))
    return rows


def _commands_processed(client: Any) -> int:
    return int(client.info("stats")["total_commands_processed"])


def local_cache_rows(
    client: Any, get_time: float, number: int, repeat: int
) -> list[Row]:
    """LocalSyncCache reads, and the middleware's per-request check."""
    import timeit

    from django.http import HttpResponse
    from django.test import RequestFactory

    from syncache import LocalSyncCache
    from syncache.middleware import LocalSyncCacheMiddleware

    rows = []
    local = LocalSyncCache(id="bench-hit")
    local["key"] = "value"
    plain = {"key": "value"}
    loops = number * 200

    def hit(target: object) -> float:
        timer = timeit.Timer("d['key']", globals={"d": target})
        return min(timer.repeat(repeat, loops)) / loops

    class EmptySubclass(dict):  # type: ignore[type-arg]
        """The floor for any dict subclass: CPython specializes ``d[k]``
        only for exact dicts."""

    local_hit = hit(local)
    rows.append(
        Row(
            "LocalSyncCache hit", "subclass", local_hit, hit(EmptySubclass(plain)), 1.05
        )
    )
    rows.append(
        Row("  LocalSyncCache hit (reference)", "dict hit", local_hit, hit(plain), None)
    )

    request = RequestFactory().get("/")
    response = HttpResponse()
    middleware = LocalSyncCacheMiddleware(lambda request: response)
    for count in (1, 10, 100, 1000):
        caches = [LocalSyncCache(id=f"bench-mw-{count}-{i}") for i in range(count)]
        middleware(request)
        before = _commands_processed(client)
        middleware(request)
        trips = _commands_processed(client) - before - 1  # minus the INFO
        rows.append(
            Row(
                f"middleware, {count} caches ({trips} round trip)",
                "raw GET",
                measure(lambda: middleware(request), number, repeat),
                get_time,
                2.0 if count == 100 else None,
            )
        )
        if count <= 100:
            rows.append(
                Row(
                    f"  naive loop, {count} caches (reference)",
                    "raw GET",
                    measure(
                        lambda caches=caches: [c.check_state() for c in caches],
                        max(1, number // count),
                        repeat,
                    ),
                    get_time,
                    None,
                )
            )
        del caches
    return rows


def report(rows: list[Row], path: Path, quick: bool) -> None:
    print(
        f"{'operation':38} {'us/op':>9} {'baseline':>10} {'us/op':>9} "
        f"{'ratio':>7} {'target':>7}"
    )
    for row in rows:
        target = f"<={row.target:g}x" if row.target else ""
        verdict = ""
        if row.target:
            verdict = "ok" if row.ratio <= row.target else "MISSED"
        scale = 1e6 if row.unit == "us" else 1
        print(
            f"{row.name:42} {row.seconds * scale:9.3f} {row.baseline:>10} "
            f"{row.baseline_seconds * scale:9.3f} {row.ratio:6.2f}x {target:>7} "
            f"{verdict}"
        )
    payload = {
        "quick": quick,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "rows": [{**asdict(row), "ratio": row.ratio} for row in rows],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--json", type=Path, default=Path("benchmark-results.json"), help="output"
    )
    args = parser.parse_args(argv)
    number, repeat = (50, 3) if args.quick else (2000, 7)

    from tests.harness.servers import RedisServer

    server = RedisServer()
    server.start()
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        configure(url)
        report(run(number, repeat, url), args.json, args.quick)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
