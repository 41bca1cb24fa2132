"""The spin lock across real processes (DESIGN.md promise 7).

* Mutual exclusion: 16 spawned processes take one lock 50 times each on
  Redis, memcached and the SQLite and PostgreSQL database caches (one
  backend after the other, in the same processes). Inside,
  each creates a marker file with ``O_EXCL`` (it fails if another holder is
  inside) and appends its fencing token to a log: the tokens, in the order
  the critical sections ran, must strictly increase.
* A holder killed in its critical section: the lock stays until its
  ``max_block_time`` runs out in the cache, then the next holder gets it,
  with a larger fencing token.
* Keys: two interpreters with different ``PYTHONHASHSEED`` make the same
  keys (the builtin ``hash()`` differs between them).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from syncache import FailIfKeyExistsIsEnabled, HashDSpinlock
from tests.harness.backends import (
    LOCK_CACHE_ALIASES,
)
from tests.harness.workers import (
    PROJECT_ROOT,
    WorkerError,
    make_barrier,
    make_event,
    make_queue,
    start_processes,
)

PROCESSES = 16
ACQUISITIONS = 50
#: Every fifth body raises: the lock is released without marking it computed.
FAIL_EVERY = 5
WAIT = 60.0
#: The backends, each as a cache alias of its own name: one group of workers
#: goes through all of them (spawning 16 interpreters costs more than the
#: 800 acquisitions on a backend).
BACKENDS = LOCK_CACHE_ALIASES
#: The longest pause of a waiter. Redis wakes waiters by signal, so long
#: pauses cost nothing there; elsewhere waiters poll.
PAUSES = {"redis": 0.5, "memcached": 0.05, "sqlite": 0.05, "postgres": 0.05}


class BodyFailed(Exception):
    """Raised on purpose inside a critical section."""


def contend(index: int, barrier: Any, directory: str) -> dict[str, list[int]]:
    """On each backend in turn, take the lock ACQUISITIONS times and prove
    nobody else is inside."""
    tokens: dict[str, list[int]] = {}
    for alias in BACKENDS:

        class Contended(HashDSpinlock):
            max_spinlock_tries = 1_000_000
            spinlock_sleep_thresh = PAUSES[alias]

        inside = os.path.join(directory, alias, "inside")
        log_path = os.path.join(directory, alias, "log")
        tokens[alias] = []
        barrier.wait()
        for round_ in range(ACQUISITIONS):
            try:
                with Contended(("counter", 1), cache_alias=alias) as lock:
                    assert lock.acquired and lock.fencing_token is not None
                    try:
                        marker = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                    except FileExistsError:
                        raise AssertionError(
                            f"worker {index} on {alias}: another holder is inside"
                        ) from None
                    os.close(marker)
                    log = os.open(log_path, os.O_CREAT | os.O_APPEND | os.O_WRONLY)
                    os.write(log, f"{lock.fencing_token} {index}\n".encode())
                    os.close(log)
                    tokens[alias].append(lock.fencing_token)
                    os.unlink(inside)
                    if round_ % FAIL_EVERY == FAIL_EVERY - 1:
                        raise BodyFailed
            except BodyFailed:
                pass
    return tokens


def test_critical_sections_never_overlap(
    lock_caches: tuple[str, ...], tmp_path: Path
) -> None:
    for alias in lock_caches:
        (tmp_path / alias).mkdir()
    results = start_processes(
        contend,
        PROCESSES,
        make_barrier(PROCESSES, timeout=WAIT),
        str(tmp_path),
        settings_overrides=None,
        timeout=240,
    ).join()
    for alias in lock_caches:
        logged = [
            int(token) for token in (tmp_path / alias / "log").read_text().split()[::2]
        ]
        assert len(logged) == PROCESSES * ACQUISITIONS, alias
        assert all(a < b for a, b in itertools.pairwise(logged)), (
            f"{alias}: fencing tokens in the order of the critical sections"
        )
        for tokens in results:
            assert len(tokens[alias]) == ACQUISITIONS, alias
        assert not (tmp_path / alias / "inside").exists()


def die_holding(index: int, started: Any, tokens: Any) -> None:
    class Doomed(HashDSpinlock):
        max_block_time = dt.timedelta(seconds=1)

    held = {}
    for alias in BACKENDS:
        lock = Doomed("orphan", cache_alias=alias)
        lock.acquire()
        held[alias] = lock.fencing_token
    tokens.put(held)
    tokens.close()
    tokens.join_thread()  # flushed before the process dies
    started.set()
    os._exit(3)


def test_a_holder_killed_mid_section_is_taken_over(
    lock_caches: tuple[str, ...],
) -> None:
    started, tokens = make_event(), make_queue()
    workers = start_processes(die_holding, 1, started, tokens, settings_overrides=None)
    try:
        assert started.wait(WAIT)
        dead_tokens = tokens.get(timeout=WAIT)
        for alias in lock_caches:
            with pytest.raises(FailIfKeyExistsIsEnabled, match="computing"):
                HashDSpinlock(
                    "orphan", fail_if_key_exists=True, cache_alias=alias
                ).acquire()
        for alias in lock_caches:
            rescuer = HashDSpinlock("orphan", cache_alias=alias)
            rescuer.max_spinlock_tries, rescuer.spinlock_sleep_thresh = 10_000, 0.05
            with rescuer:
                assert rescuer.acquired, alias
                assert rescuer.fencing_token is not None
                assert rescuer.fencing_token > dead_tokens[alias], alias
    finally:
        with pytest.raises(WorkerError, match="exited with code 3"):
            workers.join()


KEY_SCRIPT = """
import datetime, json
import django
django.setup()
from syncache import HashDSpinlock
objects = [
    "example",
    ("user", 42, "report"),
    frozenset({"a", "b", "c", "d", "e"}),
    b"bytes",
    datetime.date(2024, 1, 1),
    (None, 1.5, ("nested", frozenset({"x", "y"}))),
]
print(json.dumps({
    "keys": [HashDSpinlock(obj).get_key() for obj in objects],
    "hash": hash("example"),
}))
"""


def test_keys_are_equal_across_hash_seeds() -> None:
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [PROJECT_ROOT, env.get("PYTHONPATH")])
    )
    env.pop("SYNCACHE_TEST_SETTINGS", None)
    runs = []
    for seed in ("1", "2"):
        env["PYTHONHASHSEED"] = seed
        done = subprocess.run(
            [sys.executable, "-c", KEY_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=True,
        )
        runs.append(json.loads(done.stdout))
    assert runs[0]["hash"] != runs[1]["hash"], "the builtin hash() differs"
    assert runs[0]["keys"] == runs[1]["keys"]
    assert runs[0]["keys"][0] == HashDSpinlock("example").get_key()
    assert len(set(runs[0]["keys"])) == len(runs[0]["keys"])
