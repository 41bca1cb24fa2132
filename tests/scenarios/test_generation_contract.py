"""The generation contract (DESIGN.md promises 1, 2 and 5) with real processes.

Every test here runs on every backend shared between processes: the file
and database caches included, whose ``incr`` is not atomic. Ordering
between processes uses barriers, never sleeps.
"""

from __future__ import annotations

import ast
import logging
import pathlib
import time
from typing import Any
from unittest import mock

import pytest
from django.core.cache import caches

import syncache
from syncache import GenerationSynchronizer, expired_many
from tests.harness.workers import make_barrier, run_in_processes, start_processes

WORKERS = 8
ROUNDS = 6


def bump_and_observe(
    index: int, barrier: Any, rounds: int, skew_clocks: bool = False
) -> dict[str, Any]:
    """One worker of the concurrent bump scenario.

    Each round: refresh every observer (adopt the current generations), wait
    for everyone, then bump concurrently with everyone: once on the key all
    workers share, once on this worker's own key. After the next barrier
    every bump has returned after every observer refreshed, so every
    observer must be expired. The per-worker keys make each single bump
    observable: a write the backend dropped is not hidden by the others.

    With ``skew_clocks``, worker ``i``'s wall clock is ``i - 3`` hours off,
    so the workers disagree with each other by up to seven hours.
    """
    if skew_clocks:
        offset = (index - 3) * 3600.0
        real_time = time.time
        mock.patch("time.time", lambda: real_time() + offset).start()
    names = ["shared"] + [f"own-{i}" for i in range(WORKERS)]
    observers = [GenerationSynchronizer(name) for name in names]
    batched = [GenerationSynchronizer(name) for name in names]
    shared_writer = GenerationSynchronizer("shared")
    own_writer = GenerationSynchronizer(f"own-{index}")
    written: list[Any] = []
    missed: list[str] = []
    for round_ in range(rounds):
        for sync in observers + batched:
            sync.refresh()
        expired_many(batched)  # prime the batched snapshot
        barrier.wait()
        for writer in (shared_writer, own_writer):
            writer.mark_updated()
            if writer.sync_gen is None:
                missed.append(f"round {round_}: a bump of {writer.cache_key} failed")
        written.append(shared_writer.sync_gen)
        barrier.wait()
        for sync in observers:
            if not sync.is_expired():
                missed.append(f"round {round_}: is_expired() missed {sync.cache_key}")
        for sync, expired in zip(batched, expired_many(batched), strict=True):
            if not expired:
                missed.append(f"round {round_}: expired_many() missed {sync.cache_key}")
        barrier.wait()
    return {"written": written, "missed": missed}


def _assert_no_missed_bump(results: list[dict[str, Any]]) -> None:
    missed = [f"worker {i}: {m}" for i, r in enumerate(results) for m in r["missed"]]
    assert missed == []
    written = [value for result in results for value in result["written"]]
    assert len(written) == WORKERS * ROUNDS
    assert len(set(written)) == len(written), "a generation value was written twice"


def test_concurrent_bumps_are_never_missed(shared_backend: Any) -> None:
    results = run_in_processes(
        bump_and_observe,
        WORKERS,
        make_barrier(WORKERS),
        ROUNDS,
        settings_overrides=shared_backend.settings_overrides,
    )
    _assert_no_missed_bump(results)


def test_clocks_hours_apart_change_nothing(shared_backend: Any) -> None:
    results = run_in_processes(
        bump_and_observe,
        WORKERS,
        make_barrier(WORKERS),
        ROUNDS,
        skew_clocks=True,
        settings_overrides=shared_backend.settings_overrides,
    )
    _assert_no_missed_bump(results)


def test_syncache_never_reads_the_wall_clock() -> None:
    """No wall-clock reads anywhere, so clock skew cannot matter."""
    forbidden = {("time", "time"), ("time", "time_ns"), ("datetime", "now")}
    found = []
    for path in pathlib.Path(syncache.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and (node.value.id, node.attr) in forbidden
            ):
                found.append(f"{path.name}:{node.lineno}")
    assert found == []


def hold_then_check(index: int, barrier: Any) -> dict[str, Any]:
    """Hold a generation; after the parent evicted or flushed, check and re-seed."""
    sync = GenerationSynchronizer("evicted")
    batched = GenerationSynchronizer("evicted")
    expired_many([batched])
    held = sync.sync_gen
    barrier.wait()  # 1: everyone holds a generation
    barrier.wait()  # 2: the parent evicted it
    expired = sync.is_expired()
    batched_expired = expired_many([batched])[0]
    barrier.wait()  # 3: everyone checked; now re-seed concurrently
    sync.refresh()
    return {
        "held": held,
        "expired": expired,
        "batched": batched_expired,
        "reseeded": sync.sync_gen,
    }


@pytest.mark.parametrize("how", ["evict", "flush"])
def test_missing_generation_expires_every_holder(shared_backend: Any, how: str) -> None:
    parent = GenerationSynchronizer("evicted")
    barrier = make_barrier(WORKERS + 1)
    with start_processes(
        hold_then_check,
        WORKERS,
        barrier,
        settings_overrides=shared_backend.settings_overrides,
    ) as workers:
        barrier.wait()
        held = {parent.sync_gen}
        if how == "evict":
            caches["default"].delete(parent.cache_key)
        else:
            caches["default"].clear()
        barrier.wait()
        barrier.wait()
        results = workers.join()
    held |= {result["held"] for result in results}
    assert len(held) == 1, "every holder shared one generation"
    assert all(result["expired"] for result in results)
    if how == "flush":
        assert all(result["batched"] for result in results)
    reseeded = {result["reseeded"] for result in results}
    assert None not in reseeded
    assert not reseeded & held, "a re-seeded value equals one a process held"
    if shared_backend.atomic_add:
        assert len(reseeded) == 1, "concurrent seeders agree through add"
    assert parent.is_expired()


def test_redis_outage_is_not_an_error(
    redis_backend_isolated: Any, caplog: pytest.LogCaptureFixture
) -> None:
    holder = GenerationSynchronizer("outage")
    writer = GenerationSynchronizer("outage")
    assert not holder.is_expired()
    redis_backend_isolated.server.stop()
    with caplog.at_level(logging.ERROR, logger="syncache"):
        assert holder.is_expired()
        assert expired_many([holder]) == [True]
        writer.mark_updated()
        holder.refresh()
        holder.clear()
    assert holder.sync_gen is None and writer.sync_gen is None
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, "logged at most once per interval"
    redis_backend_isolated.server.restart()
    holder.refresh()
    writer.refresh()
    assert not holder.is_expired()
    assert expired_many([holder]) == [False]
    writer.mark_updated()
    assert holder.is_expired()
    assert expired_many([holder]) == [True]
