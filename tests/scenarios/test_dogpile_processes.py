"""One creator per expiry across real processes (DESIGN.md promises 7 and 8).

Every test runs on each backend other processes share that can hold a lock
(all but the file cache, which has no atomic add). The creator is kept
"slow" with events the parent sets once it has seen what it waits for,
never with sleeps.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import Counter
from typing import Any

import pytest

from syncache import CacheMutex, get_or_create
from syncache.dogpile import invalidate
from tests.harness.workers import (
    WorkerError,
    make_barrier,
    make_event,
    make_queue,
    start_processes,
)

PROCESSES = 4
THREADS = 8
REQUESTERS = PROCESSES * THREADS
WAIT = 30.0


def requesters(
    index: int, barrier: Any, messages: Any, first_go: Any, second_go: Any
) -> dict[str, list[str]]:
    """8 threads ask for the same key, twice: first with no value at all,
    then (after the parent made it stale) with a stale one.

    Every thread reports entering and returning on ``messages``; the
    creator reports itself, then waits for the parent's go.
    """

    def run_phase(label: str, go: Any) -> list[str]:
        def creator() -> str:
            messages.put(("created", label, index))
            if not go.wait(WAIT):
                raise TimeoutError("the parent never let the creator finish")
            return label

        returned: list[str] = []

        def request() -> None:
            messages.put(("entering", label, index))
            value = get_or_create("hot", creator, 60, lock_timeout=WAIT)
            messages.put(("returned", label, value))
            returned.append(value)

        threads = [threading.Thread(target=request) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return returned

    barrier.wait()
    missing = run_phase("v1", first_go)
    barrier.wait()  # the parent makes the value stale
    barrier.wait()
    stale = run_phase("v2", second_go)
    return {"missing": missing, "stale": stale}


def _collect(messages: Any, counts: Counter[tuple[str, ...]], done: Any) -> None:
    """Read messages into ``counts`` until ``done(counts)``."""
    deadline = time.monotonic() + WAIT
    while not done(counts):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"still waiting; received {dict(counts)}"
        try:
            message = messages.get(timeout=remaining)
        except queue.Empty:
            continue
        counts[message[:2] if message[0] != "returned" else message] += 1


def test_one_creator_per_expiry_across_processes(shared_lock_backend: Any) -> None:
    barrier = make_barrier(PROCESSES + 1)
    messages = make_queue()
    first_go, second_go = make_event(), make_event()
    counts: Counter[tuple[str, ...]] = Counter()
    with start_processes(
        requesters,
        PROCESSES,
        barrier,
        messages,
        first_go,
        second_go,
        settings_overrides=shared_lock_backend.settings_overrides,
        timeout=120,
    ) as workers:
        barrier.wait()
        # No value: everyone waits while the one creator works.
        _collect(
            messages,
            counts,
            lambda c: c["entering", "v1"] == REQUESTERS and c["created", "v1"],
        )
        assert not any(key[0] == "returned" for key in counts), "nobody had a value"
        first_go.set()
        _collect(messages, counts, lambda c: c["returned", "v1", "v1"] == REQUESTERS)
        barrier.wait()
        invalidate("hot")
        barrier.wait()
        # Stale value: everyone but the creator returns it at once, while
        # the creator is still blocked on second_go.
        _collect(
            messages,
            counts,
            lambda c: (
                c["returned", "v2", "v1"] == REQUESTERS - 1 and c["created", "v2"]
            ),
        )
        second_go.set()
        results = workers.join()
    _collect(messages, counts, lambda c: c["returned", "v2", "v2"] == 1)
    assert counts["created", "v1"] == 1, "one creator for the missing value"
    assert counts["created", "v2"] == 1, "one creator for the stale value"
    assert sorted(v for r in results for v in r["missing"]) == ["v1"] * REQUESTERS
    assert sorted(v for r in results for v in r["stale"]) == ["v1"] * 31 + ["v2"]
    assert get_or_create("hot", lambda: "v3", 60) == "v2"
    assert not CacheMutex("hot", namespace="dogpile").locked()


def die_while_creating(index: int, started: Any) -> None:
    def creator() -> str:
        started.set()
        os._exit(3)

    get_or_create("orphan", creator, 60, lock_timeout=1)


def test_a_holder_killed_mid_creation_is_taken_over(shared_lock_backend: Any) -> None:
    started = make_event()
    workers = start_processes(
        die_while_creating,
        1,
        started,
        settings_overrides=shared_lock_backend.settings_overrides,
    )
    try:
        assert started.wait(WAIT)
        assert CacheMutex("orphan", namespace="dogpile").locked(), (
            "the dead holder's lock is still there"
        )
        began = time.monotonic()
        value = get_or_create("orphan", lambda: "rescued", 60, lock_timeout=1)
        waited = time.monotonic() - began
    finally:
        with pytest.raises(WorkerError):
            workers.join()
    assert value == "rescued"
    assert waited < 10, "taken over once the lock expired"
    assert not CacheMutex("orphan", namespace="dogpile").locked()


def fail_to_create(index: int, barrier: Any) -> str:
    def creator() -> str:
        raise ValueError(f"creator of worker {index} failed")

    barrier.wait()
    try:
        get_or_create("failing", creator, 60, lock_timeout=WAIT)
    except ValueError as error:
        return str(error)
    return "no error"


def test_a_failing_creator_frees_the_lock_and_stores_nothing(
    shared_lock_backend: Any,
) -> None:
    results = start_processes(
        fail_to_create,
        3,
        make_barrier(3),
        settings_overrides=shared_lock_backend.settings_overrides,
    ).join()
    # Nobody hung: with no value stored, each waiter in turn ran the creator
    # and got its own error.
    assert results == [f"creator of worker {i} failed" for i in range(3)]
    assert not CacheMutex("failing", namespace="dogpile").locked()
    assert get_or_create("failing", lambda: "ok", 60) == "ok"


def create_slowly(index: int, creating: Any, go: Any) -> str:
    def creator() -> str:
        creating.set()
        if not go.wait(WAIT):
            raise TimeoutError("the parent never let the creator finish")
        return "late"

    return get_or_create("late", creator, 60, lock_timeout=1)


def test_a_creator_outliving_its_lock_does_not_overwrite_the_takeover(
    shared_lock_backend: Any,
) -> None:
    """The creator in another process holds a 1 s lock and goes on for
    longer: this process waits for the lock's expiry, takes over and stores
    its value. The late creator's caller gets its own value, but it is not
    stored over the newer one."""
    creating, go = make_event(), make_event()
    workers = start_processes(
        create_slowly,
        1,
        creating,
        go,
        settings_overrides=shared_lock_backend.settings_overrides,
    )
    try:
        assert creating.wait(WAIT)
        value = get_or_create("late", lambda: "takeover", 60, lock_timeout=WAIT)
    finally:
        go.set()
        [late] = workers.join()
    assert value == "takeover"
    assert late == "late", "the late creator's caller gets what it computed"
    assert get_or_create("late", lambda: "again", 60) == "takeover", "not overwritten"
    assert not CacheMutex("late", namespace="dogpile").locked()
