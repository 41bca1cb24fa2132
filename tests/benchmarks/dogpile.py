"""Benchmark: get_or_create under a dogpile, against the naive approach.

32 requesters (4 spawned processes x 8 threads) ask for one expired key at
once; the creator takes ``CREATOR_SECONDS``. Reported: how many times the
creator ran, and the latency (median, p99) of the requesters that did not
run it. With :func:`syncache.get_or_create` the key is stale (a previous
value exists), so the others should get it at once; the naive ``cache.get``
/ compute / ``cache.set`` has no stale value and runs the creator in up to
all 32 requesters. Also: the round trips of one request answered with the
stale value while another process holds the lock (target: at most 2).

``rows(number, repeat)`` plugs into ``python -m tests.benchmarks``; run
``python -m tests.benchmarks.dogpile`` for this benchmark alone.
"""

from __future__ import annotations

import multiprocessing
import statistics
import threading
import time
from typing import Any

PROCESSES = 4
THREADS = 8
CREATOR_SECONDS = 0.05
KEY = "bench-dogpile"
COUNTER = "bench-dogpile-creations"


def _client() -> Any:
    from django.core.cache import caches

    return caches["default"]._cache.get_client(None, write=True)  # type: ignore[attr-defined]


def _creator() -> str:
    _client().incr(COUNTER)
    time.sleep(CREATOR_SECONDS)
    return "new"


def _naive() -> Any:
    from django.core.cache import caches

    cache = caches["default"]
    value = cache.get(KEY)
    if value is None:
        value = _creator()
        cache.set(KEY, value, 60)
    return value


def _dogpile() -> Any:
    from syncache import get_or_create

    return get_or_create(KEY, _creator, 60, lock_timeout=10)


def _requester_process(redis_url: str, mode: str, barrier: Any, out: Any) -> None:
    from tests.benchmarks.__main__ import configure

    configure(redis_url)
    request = _dogpile if mode == "dogpile" else _naive
    _client().ping()
    results: list[tuple[float, Any]] = []

    def thread_main() -> None:
        barrier.wait()
        start = time.perf_counter()
        value = request()
        results.append((time.perf_counter() - start, value))

    threads = [threading.Thread(target=thread_main) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put(results)


def _dogpile_round(redis_url: str, mode: str) -> tuple[int, list[float]]:
    """One stampede; return the creator calls and the non-creators' latencies."""
    from django.core.cache import caches

    from syncache import get_or_create
    from syncache.dogpile import invalidate

    client = _client()
    if mode == "dogpile":
        invalidate(KEY, hard=True)
        get_or_create(KEY, lambda: "old", 60)
        invalidate(KEY)
    else:
        caches["default"].delete(KEY)
    client.set(COUNTER, 0)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES * THREADS)
    out = ctx.Queue()
    processes = [
        ctx.Process(target=_requester_process, args=(redis_url, mode, barrier, out))
        for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    results = [item for _ in processes for item in out.get(timeout=60)]
    for process in processes:
        process.join(60)
    calls = int(client.get(COUNTER))
    if mode == "dogpile":
        waiters = [seconds for seconds, value in results if value == "old"]
    else:
        waiters = [seconds for seconds, _ in results]
    return calls, waiters


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def _stale_round_trips() -> tuple[int, float, float]:
    """Round trips and time of one stale answer while another holds the lock,
    and the time of a raw GET."""
    from syncache import CacheMutex, get_or_create
    from syncache.dogpile import invalidate
    from tests.benchmarks.__main__ import _commands_processed, measure

    client = _client()
    invalidate(KEY, hard=True)
    get_or_create(KEY, lambda: "old", 60)
    invalidate(KEY)
    holder = CacheMutex(KEY, timeout=60, namespace="dogpile")
    assert holder.acquire(wait=False)
    try:

        def stale() -> object:
            return get_or_create(KEY, _creator, 60)

        assert stale() == "old"
        before = _commands_processed(client)
        stale()
        trips = _commands_processed(client) - before - 1  # minus the INFO
        stale_time = measure(stale, 200, 5)
    finally:
        holder.release()
    client.set("raw:get", 1)
    return trips, stale_time, measure(lambda: client.get("raw:get"), 200, 5)


def rows(number: int, repeat: int) -> list[Any]:
    """Run the stampedes; return ``Row`` objects for ``tests.benchmarks``."""
    from django.conf import settings

    from tests.benchmarks.__main__ import Row

    redis_url = settings.CACHES["default"]["LOCATION"]
    rounds = 1 if number < 100 else 3
    figures: dict[str, tuple[list[int], list[float]]] = {}
    for mode in ("dogpile", "naive"):
        calls: list[int] = []
        latencies: list[float] = []
        for _ in range(rounds):
            round_calls, round_latencies = _dogpile_round(redis_url, mode)
            calls.append(round_calls)
            latencies.extend(round_latencies)
        figures[mode] = (calls, latencies)
    dogpile_calls, dogpile_latencies = figures["dogpile"]
    naive_calls, naive_latencies = figures["naive"]
    trips, stale_time, get_time = _stale_round_trips()
    return [
        Row(
            f"stampede {PROCESSES * THREADS} req: creator calls {max(dogpile_calls)} "
            f"(naive {min(naive_calls)}-{max(naive_calls)})",
            "naive",
            max(dogpile_calls),
            max(naive_calls),
            None,
            unit="calls",
        ),
        Row(
            "stampede: waiter latency median",
            "naive",
            statistics.median(dogpile_latencies),
            statistics.median(naive_latencies),
            None,
        ),
        Row(
            "stampede: waiter latency p99",
            "naive",
            _p99(dogpile_latencies),
            _p99(naive_latencies),
            None,
        ),
        Row(
            f"stale answer, lock held elsewhere ({trips} round trips)",
            "raw GET",
            stale_time,
            get_time,
            None,
        ),
    ]


def main() -> None:
    from tests.benchmarks.__main__ import configure
    from tests.harness.servers import RedisServer

    server = RedisServer()
    server.start()
    try:
        configure(f"redis://127.0.0.1:{server.port}/0")
        for row in rows(2000, 7):
            unit = "" if "creator calls" in row.name else " s"
            print(
                f"{row.name:60} {row.seconds:10.6f}{unit}  {row.baseline} "
                f"{row.baseline_seconds:10.6f}{unit}  ratio {row.ratio:.3f}"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
