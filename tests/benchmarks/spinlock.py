"""Benchmark: the spin lock against a raw ``SET NX`` + ``DEL``, and its
hand-off under contention against dspinlock's fixed 0.5 s sleep.

* Uncontended: ``with HashDSpinlock(obj): pass`` on an object computed
  before (the usual case: the state is taken over from "computed") against
  one raw ``SET NX PX`` and one ``DEL`` on the same server (target: 2x).
  ``CacheMutex`` is shown for reference.
* Hand-off: ``PROCESSES`` spawned processes ask for one lock at once, once
  per round, each holding it for ``HOLD`` seconds; a hand-off is the time
  from a holder's last instant inside to the next holder's first (the
  release, the wake-up and the next acquisition), 3 per round. The baseline
  is a lock that sleeps 0.5 s between tries, as dspinlock does. Target: the
  median within a few round trips (raw ``GET``), with no fixed sleep; the
  hand-off is also shown against one uncontended acquire+release.

``rows(number, repeat)`` plugs into ``python -m tests.benchmarks``; run
``python -m tests.benchmarks.spinlock`` for this benchmark alone.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import secrets
import statistics
import time
from collections.abc import Iterator
from typing import Any

PROCESSES = 4
#: Seconds each holder keeps the lock in the hand-off benchmark.
HOLD = 0.005
#: dspinlock's fixed pause between two tries.
NAIVE_SLEEP = 0.5
KEY = "bench-spinlock"


def _client() -> Any:
    from django.core.cache import caches

    return caches["default"]._cache.get_client(None, write=True)  # type: ignore[attr-defined]


@contextlib.contextmanager
def _naive_lock(client: Any) -> Iterator[None]:
    """dspinlock's waiting: try, and sleep a fixed 0.5 s while it is held."""
    token = secrets.token_hex(16)
    while not client.set("raw:" + KEY, token, nx=True, px=60_000):
        time.sleep(NAIVE_SLEEP)
    try:
        yield
    finally:
        client.delete("raw:" + KEY)


def _contender(
    redis_url: str, mode: str, rounds: int, barrier: Any, last: Any, out: Any
) -> None:
    """Take the lock once per round, all processes at once; report the
    hand-offs seen on entering.

    ``last`` holds the round and the monotonic time (one clock for every
    process of this host) at which the previous holder left its critical
    section; only a predecessor of the same round counts.
    """
    from syncache import HashDSpinlock
    from tests.benchmarks.__main__ import configure

    configure(redis_url)
    client = _client()
    client.ping()
    handoffs: list[float] = []
    for round_ in range(rounds):
        lock = HashDSpinlock(KEY) if mode == "spinlock" else _naive_lock(client)
        barrier.wait()
        with lock:
            entered = time.monotonic()
            if last[0] == round_:
                handoffs.append(entered - last[1])
            time.sleep(HOLD)
            last[0], last[1] = round_, time.monotonic()
    out.put(handoffs)


def _handoffs(redis_url: str, mode: str, rounds: int) -> list[float]:
    """Hand-offs between processes: PROCESSES - 1 per round."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    last = ctx.Array("d", [-1.0, 0.0])
    out = ctx.Queue()
    processes = [
        ctx.Process(
            target=_contender, args=(redis_url, mode, rounds, barrier, last, out)
        )
        for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    handoffs = [item for _ in processes for item in out.get(timeout=300)]
    for process in processes:
        process.join(60)
    return handoffs


@contextlib.contextmanager
def _counting(client: Any) -> Iterator[list[int]]:
    """Count the commands ``client`` sends (a script is one round trip)."""
    real = client.execute_command
    sent = [0]

    def counted(*args: Any, **kwargs: Any) -> Any:
        sent[0] += 1
        return real(*args, **kwargs)

    client.execute_command = counted
    try:
        yield sent
    finally:
        del client.execute_command


def _uncontended(number: int, repeat: int) -> tuple[int, float, int, float, float]:
    """Round trips and time of a spin lock and of a CacheMutex acquisition
    and release, and the time of a raw SET NX + DEL."""
    from syncache import CacheMutex, HashDSpinlock
    from syncache.medium import get_medium
    from tests.benchmarks.__main__ import measure

    client = _client()

    def spin() -> None:
        with HashDSpinlock("bench-uncontended"):
            pass

    mutex = CacheMutex("bench-uncontended-mutex")

    def cache_mutex() -> None:
        with mutex:
            pass

    def raw() -> None:
        client.set("raw:bench-uncontended", "token", nx=True, px=60_000)
        client.delete("raw:bench-uncontended")

    trips = []
    for operation in (spin, cache_mutex):
        operation()
        with _counting(get_medium().client()) as sent:  # type: ignore[attr-defined]
            operation()
        trips.append(sent[0])
    return (
        trips[0],
        measure(spin, number, repeat),
        trips[1],
        measure(cache_mutex, number, repeat),
        measure(raw, number, repeat),
    )


def rows(number: int, repeat: int) -> list[Any]:
    """Measure; return ``Row`` objects for ``tests.benchmarks``."""
    from django.conf import settings

    from tests.benchmarks.__main__ import Row, measure
    from tests.benchmarks.dogpile import _p99

    redis_url = settings.CACHES["default"]["LOCATION"]
    spin_trips, spin_time, mutex_trips, mutex_time, raw_time = _uncontended(
        number, repeat
    )
    quick = number < 100
    ours = _handoffs(redis_url, "spinlock", 10 if quick else 60)
    naive = _handoffs(redis_url, "naive", 2 if quick else 5)
    client = _client()
    client.set("raw:get", 1)
    get_time = measure(lambda: client.get("raw:get"), number, repeat)
    return [
        Row(
            f"spin lock acquire+release ({spin_trips} round trips)",
            "SET NX+DEL",
            spin_time,
            raw_time,
            2.0,
        ),
        Row(
            f"  CacheMutex acquire+release ({mutex_trips}) (reference)",
            "SET NX+DEL",
            mutex_time,
            raw_time,
            None,
        ),
        Row(
            f"spin lock hand-off median, {PROCESSES} processes",
            "fixed 0.5s",
            statistics.median(ours),
            statistics.median(naive),
            None,
        ),
        Row(
            "spin lock hand-off p99",
            "fixed 0.5s",
            _p99(ours),
            _p99(naive),
            None,
        ),
        Row(
            "spin lock hand-off median in round trips",
            "raw GET",
            statistics.median(ours),
            get_time,
            5.0,
        ),
        Row(
            "  hand-off median (reference)",
            "uncontended",
            statistics.median(ours),
            spin_time,
            None,
        ),
    ]


def main() -> None:
    import sys

    from tests.benchmarks.__main__ import configure, report
    from tests.harness.servers import RedisServer

    quick = "--quick" in sys.argv[1:]
    server = RedisServer()
    server.start()
    try:
        configure(f"redis://127.0.0.1:{server.port}/0")
        from pathlib import Path

        report(
            rows(*((50, 3) if quick else (2000, 7))),
            Path("/tmp/syncache-benchmark-spinlock.json"),
            quick,
        )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
