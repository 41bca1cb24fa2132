"""Locks under faults: a holder paused past its expiry (SIGSTOP).

Two spawned processes, on Redis, memcached and the SQLite and PostgreSQL
database caches at once (one cache alias each), with both lock kinds,
``CacheMutex`` and ``HashDSpinlock``, each lasting one second:

1. the first process takes every lock and reports its fencing tokens;
2. the test SIGSTOPs it: a holder stuck in a GC pause, a swapped-out VM;
3. the second process takes every lock (each once the cache expired it),
   writes a guarded row with its fencing token (``fenced_update``), and
   keeps the locks;
4. the test resumes the first process, which tries its own guarded write
   with its old token, then releases its locks.

Then: every second holder has a larger fencing token; the paused holder's
guarded writes are refused (0 rows) while the new holder's went through;
its releases fail cleanly (``CacheMutex.release()`` returns False, the spin
lock raises ``InvalidMutexReleaseEncountered``) and leave the new holder's
locks alone. Ordering uses events, never sleeps; the only waiting on time
is the lock's own expiry.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from typing import Any

import pytest
from django.db import models

from syncache import (
    CacheMutex,
    HashDSpinlock,
    InvalidMutexReleaseEncountered,
    fenced_update,
)
from syncache.medium import get_medium
from tests.harness.backends import (
    LOCK_CACHE_ALIASES,
)
from tests.harness.workers import make_event, make_queue, start_processes
from tests.stress.report import Figure, record

BACKENDS = LOCK_CACHE_ALIASES
KINDS = ("CacheMutex", "HashDSpinlock")
#: Seconds each lock lasts (memcached and the database cache's CacheMutex
#: round up to whole seconds, plus one).
EXPIRY = 1.0
WAIT = 60.0

pytestmark = pytest.mark.django_db(transaction=True)


class StressFencedRow(models.Model):
    """A resource written under a lock, guarded by the fencing token."""

    name = models.CharField(max_length=80, unique=True)
    fence = models.BigIntegerField(default=0)
    writer = models.CharField(max_length=20, default="")

    class Meta:
        app_label = "tests"


class ShortSpinlock(HashDSpinlock):
    max_block_time = dt.timedelta(seconds=EXPIRY)
    max_spinlock_tries = 1_000_000
    spinlock_sleep_thresh = 0.05


def _lock(kind: str, alias: str) -> Any:
    if kind == "CacheMutex":
        return CacheMutex(("paused", alias), timeout=EXPIRY, cache_alias=alias)
    return ShortSpinlock(("paused", alias), cache_alias=alias)


def _acquire(lock: Any) -> None:
    if isinstance(lock, CacheMutex):
        assert lock.acquire(timeout=WAIT), f"{lock!r} not acquired"
    else:
        assert lock.acquire(), f"{lock!r} not acquired"
    assert lock.fencing_token is not None and not lock.degraded


def _write(kind: str, alias: str, token: int, writer: str) -> int:
    rows = StressFencedRow.objects.filter(name=f"{kind}:{alias}")
    return fenced_update(rows, token, writer=writer)


def _held_value(kind: str, alias: str, lock: Any) -> Any:
    """What the cache holds at the lock's key."""
    medium = get_medium(alias)
    if kind == "CacheMutex":
        return medium.lock_value(lock.lock_key)
    return medium.lock_value(lock.state_key)


def paused_holder(
    index: int, held: Any, go: Any, done: Any, reports: Any
) -> dict[str, Any]:
    """Take every lock, report, wait (paused meanwhile), then act late."""
    locks = {(k, a): _lock(k, a) for k in KINDS for a in BACKENDS}
    for lock in locks.values():
        _acquire(lock)
    reports.put({f"{k}:{a}": lock.fencing_token for (k, a), lock in locks.items()})
    held.set()
    assert go.wait(WAIT)
    outcome: dict[str, Any] = {}
    for (kind, alias), lock in locks.items():
        name = f"{kind}:{alias}"
        written = _write(kind, alias, lock.fencing_token, "paused")
        if kind == "CacheMutex":
            released: Any = lock.release()
        else:
            try:
                lock.release()
                released = True
            except InvalidMutexReleaseEncountered as error:
                released = f"raised: {error}"
        outcome[name] = {"written": written, "released": released}
    done.set()
    return outcome


def next_holder(index: int, start: Any, holding: Any, release: Any) -> dict[str, Any]:
    """Once the first holder is paused: take every lock, write, keep them
    until the paused holder has tried its late write and release."""
    assert start.wait(WAIT)
    locks = {(k, a): _lock(k, a) for k in KINDS for a in BACKENDS}
    outcome: dict[str, Any] = {}
    began = time.monotonic()
    for (kind, alias), lock in locks.items():
        _acquire(lock)
        outcome[f"{kind}:{alias}"] = {
            "token": lock.fencing_token,
            "written": _write(kind, alias, lock.fencing_token, "next"),
            "value": _held_value(kind, alias, lock),
        }
    waited = time.monotonic() - began
    holding.set()
    assert release.wait(WAIT)
    for (kind, alias), lock in locks.items():
        entry = outcome[f"{kind}:{alias}"]
        value = entry.pop("value")
        entry["intact"] = value is not None and _held_value(kind, alias, lock) == value
    for (kind, _), lock in locks.items():
        if kind == "CacheMutex":
            assert lock.release(), "the next holder's release"
        else:
            lock.release()
    return {"locks": outcome, "waited": waited}


def test_a_holder_paused_past_its_expiry(lock_caches: tuple[str, ...]) -> None:
    for kind in KINDS:
        for alias in lock_caches:
            StressFencedRow.objects.create(name=f"{kind}:{alias}")
    held, go, done = make_event(), make_event(), make_event()
    start, holding = make_event(), make_event()
    reports = make_queue()
    paused = start_processes(
        paused_holder, 1, held, go, done, reports, settings_overrides=None
    )
    follower = start_processes(
        next_holder, 1, start, holding, done, settings_overrides=None
    )
    pid = paused.pids[0]
    assert pid is not None
    with paused, follower:
        assert held.wait(WAIT)
        first_tokens = reports.get(timeout=WAIT)
        os.kill(pid, signal.SIGSTOP)
        try:
            start.set()
            assert holding.wait(WAIT), "the next holder never got the locks"
        finally:
            os.kill(pid, signal.SIGCONT)
        go.set()
        [late] = paused.join()
        [then] = follower.join()
    failures = []
    for name, first in first_tokens.items():
        taken = then["locks"][name]
        kind, alias = name.split(":")
        if not taken["token"] > first:
            failures.append(f"{name}: token {taken['token']} after {first}")
        if not taken["intact"]:
            failures.append(f"{name}: the paused holder's release changed the lock")
        if taken["written"] != 1:
            failures.append(f"{name}: the next holder's write was refused")
        if late[name]["written"] != 0:
            failures.append(f"{name}: the paused holder's write went through")
        expected = False if kind == "CacheMutex" else "raised"
        released = late[name]["released"]
        if not (released is expected or str(released).startswith(str(expected))):
            failures.append(f"{name}: the paused holder's release gave {released!r}")
        row = StressFencedRow.objects.get(name=name)
        if (row.fence, row.writer) != (taken["token"], "next"):
            failures.append(f"{name}: row {row.fence}, {row.writer!r}")
    for alias in lock_caches:
        tokens = ", ".join(
            f"{kind} {first_tokens[f'{kind}:{alias}']} -> "
            f"{then['locks'][f'{kind}:{alias}']['token']}"
            for kind in KINDS
        )
        record(
            Figure(
                scenario="lock holder paused",
                backend=alias,
                operations=4 * len(KINDS),
                stale_reads=0,
                faults="SIGSTOP holder",
                exceptions=0,
                recovery=f"taken over within {then['waited']:.1f} s",
                notes=f"fencing tokens {tokens}; late writes refused",
            )
        )
    assert failures == []
