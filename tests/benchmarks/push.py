"""Benchmark: push invalidation (Redis pub/sub).

Two figures, both on the Redis server ``python -m tests.benchmarks``
starts:

* the per-request check in push mode (``check_all()`` over 100 local
  caches while nothing changes) against a plain dict read, with the round
  trips it costs counted by the server (target: none, and at most 2 us);
* propagation: the time from ``clear()`` in one process to the cache being
  emptied in another process that serves no request (its listener thread
  empties it and calls ``on_invalidate``). Measured clock-free as a ping
  pong between two processes, each emptying the other's cache from its
  callback: one way is half a round trip (target: p99 <= 5 ms on loopback).
  The baseline is the same ping pong with raw redis-py ``PUBLISH`` and a
  subscriber thread, the floor any pub/sub design pays.
"""

from __future__ import annotations

import multiprocessing
import statistics
import threading
import time
import timeit
from typing import Any

PUSH = {"KEY_PREFIX": "bench-push", "PUSH": True, "PUSH_RECHECK_INTERVAL": 60}
WAIT = 10.0


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _echo(redis_url: str, ready: Any, stop: Any) -> None:
    """The other process: empty "pong" everywhere whenever "ping" is emptied
    here by another process."""
    from django.test import override_settings

    from tests.benchmarks.__main__ import configure

    configure(redis_url)
    with override_settings(SYNCACHE=PUSH):
        from syncache import LocalSyncCache, check_all
        from syncache.push import listener_for

        ping, pong = LocalSyncCache("ping"), LocalSyncCache("pong")
        ping.on_invalidate(lambda cache: pong.clear())
        check_all()
        listener = listener_for(None)
        assert listener is not None and listener.wait_trusted(WAIT)
        ready.set()
        stop.wait()


def _raw_echo(redis_url: str, ready: Any, stop: Any) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("raw-ping")
    pubsub.get_message(timeout=WAIT)  # the confirmation
    ready.set()
    while not stop.is_set():
        if pubsub.get_message(timeout=0.5) is not None:
            client.publish("raw-pong", b"1")


def _ping_pong(target: Any, redis_url: str, rounds: int, setup: Any) -> list[float]:
    """Start ``target`` in a spawned process; return the one-way times."""
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    process = context.Process(target=target, args=(redis_url, ready, stop))
    process.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the echo process did not start")
        send, wait = setup()
        times = []
        for _ in range(rounds):
            began = time.perf_counter()
            send()
            if not wait(WAIT):
                raise RuntimeError("no echo")
            times.append((time.perf_counter() - began) / 2)
        return times
    finally:
        stop.set()
        process.join(30)


def rows(number: int, repeat: int, redis_url: str) -> list[Any]:
    """Measure; return ``Row`` objects for ``tests.benchmarks``."""
    import redis
    from django.test import override_settings

    from syncache import LocalSyncCache, check_all
    from syncache.push import listener_for
    from tests.benchmarks.__main__ import Row

    result = []
    rounds = max(20, number // 10)
    with override_settings(SYNCACHE=PUSH):
        listener = listener_for(None)
        assert listener is not None and listener.wait_trusted(WAIT)
        caches = [LocalSyncCache(f"bench-push-{i}") for i in range(100)]
        check_all()
        client = redis.Redis.from_url(redis_url)
        client.config_resetstat()
        loops = number * 20
        check = min(timeit.repeat(check_all, number=loops, repeat=repeat)) / loops
        stats = client.info("commandstats")
        reads = sum(
            stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("get", "mget")
        )
        plain = {"key": "value"}
        timer = timeit.Timer("d['key']", globals={"d": plain})
        dict_hit = min(timer.repeat(repeat, loops)) / loops
        result.append(
            Row(
                f"push: check, 100 caches ({reads} reads; <= 2 us)",
                "dict hit",
                check,
                dict_hit,
                None,
            )
        )
        del caches

        ping, pong = LocalSyncCache("ping"), LocalSyncCache("pong")
        emptied = threading.Event()
        pong.on_invalidate(lambda cache: emptied.set())

        def push_setup() -> Any:
            def send() -> None:
                emptied.clear()
                ping.clear()

            return send, emptied.wait

        pushed = _ping_pong(_echo, redis_url, rounds, push_setup)

    def raw_setup() -> Any:
        client = redis.Redis.from_url(redis_url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe("raw-pong")
        pubsub.get_message(timeout=WAIT)
        return (
            lambda: client.publish("raw-ping", b"1"),
            lambda timeout: pubsub.get_message(timeout=timeout) is not None,
        )

    raw = _ping_pong(_raw_echo, redis_url, rounds, raw_setup)
    for label, fraction in (("median", 0.5), ("p99", 0.99)):
        result.append(
            Row(
                f"push: propagation {label} (<= 5 ms)",
                "raw pubsub",
                _percentile(pushed, fraction),
                _percentile(raw, fraction),
                None,
            )
        )
    result.append(
        Row(
            "  propagation mean (reference)",
            "raw pubsub",
            statistics.fmean(pushed),
            statistics.fmean(raw),
            None,
        )
    )
    return result
