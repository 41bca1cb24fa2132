"""The linearizable-at-check model test, on every backend shared by processes.

Eight spawned processes run a random mix of updates and reads through
``LocalSyncCache``, ``GenerationSynchronizer``, groups and ``get_or_create``
(``tests/stress/model.py`` describes the workload and the rule); the
checker replays their log and counts stale reads. The checker itself is
tested first, on hand-made logs and on a workload that skips its
invalidations, so a zero below means something.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from syncache import get_or_create
from syncache.dogpile import invalidate
from tests.harness.backends import Backend
from tests.harness.workers import ctx, make_event, start_processes
from tests.stress.model import (
    APIS,
    Op,
    Plan,
    Shared,
    Workload,
    check,
    start_model,
)
from tests.stress.report import Figure, record
from tests.stress.sizes import MODEL_OPS, OBJECTS, WORKERS

#: The backends the model runs on (the file cache cannot hold a lock, so
#: ``get_or_create`` is left out there: it raises LockNotSupported, as
#: documented).
MODEL_BACKENDS = ("redis", "memcached", "postgres", "sqlite", "file")

RUN_TIMEOUT = 1_800.0


def _op(worker: int, kind: str, version: int, ticket: int, **extra: Any) -> Op:
    fields: dict[str, Any] = {
        "worker": worker,
        "kind": kind,
        "api": "local",
        "obj": 0,
        "version": version,
        "ticket": ticket,
        "committed": kind == "update",
        "clean": True,
        "phase": 0,
        "key": "k",
        "generation": None,
        "started": 0.0,
        "seconds": 0.0,
    }
    fields.update(extra)
    return Op(**fields)


def _results(
    *ops: Op, arrivals: dict[int, dict[str, list[int]]] | None = None
) -> list[dict[str, Any]]:
    workers = sorted({op.worker for op in ops} | set(arrivals or {}))
    return [
        {
            "worker": w,
            "ops": [op for op in ops if op.worker == w],
            "arrivals": (arrivals or {}).get(w, {}),
        }
        for w in workers
    ]


# -- the checker --------------------------------------------------------------


def test_checker_counts_a_read_older_than_a_committed_update() -> None:
    verdict = check(
        _results(
            _op(0, "update", 1, ticket=1),
            _op(1, "read", 1, ticket=2),
            _op(0, "update", 2, ticket=3),
            _op(1, "read", 1, ticket=4),  # stale: version 2 was committed at 3
            _op(1, "read", 2, ticket=5),
        )
    )
    assert (verdict.reads, verdict.updates, verdict.committed) == (3, 2, 2)
    assert [(read.ticket, update.version) for read, update in verdict.stale] == [(4, 2)]


def test_checker_allows_reads_that_overlap_the_update() -> None:
    """A read whose check began before the update's invalidation returned
    may return either version: its ticket is smaller."""
    verdict = check(
        _results(_op(1, "read", 0, ticket=1), _op(0, "update", 1, ticket=2))
    )
    assert verdict.stale == []


def test_checker_ignores_failed_invalidations_but_counts_them() -> None:
    verdict = check(
        _results(
            _op(0, "update", 1, ticket=1, committed=False),
            _op(1, "read", 0, ticket=2),
        )
    )
    assert verdict.stale == [] and verdict.unrecorded_stale == 1


def test_checker_in_push_mode_waits_for_the_message() -> None:
    """Push mode: another process must see the change once the message
    reached it (its ticket of arrival), the writer at once."""
    bump = _op(0, "update", 1, ticket=2, generation=10)
    ops = (
        bump,
        _op(1, "read", 0, ticket=3),  # message not there yet: allowed
        _op(0, "read", 0, ticket=4),  # the writer itself: stale
        _op(1, "read", 0, ticket=6),  # message arrived at 5: stale
    )
    verdict = check(_results(*ops, arrivals={1: {"k": [5]}}), push=True)
    assert [read.ticket for read, _ in verdict.stale] == [4, 6]
    assert len(check(_results(*ops)).stale) == 3, "without push all three are"


@pytest.mark.parametrize("backend", ["locmem"], indirect=True)
def test_the_model_finds_stale_reads_when_invalidations_are_dropped(
    fresh_registry: Any, backend: Backend
) -> None:
    """The workload with its invalidations left out, in this process: the
    checker must find stale reads through every API."""
    plan = Plan(ops=400, objects=3, drop_invalidations=True, seed=7)
    workload = Workload(0, Shared.create(plan, ctx), plan)
    workload.start()
    workload.run(random.Random(1))
    verdict = check([workload.result()])
    assert workload.exception_count == 0, workload.exceptions
    assert {read.api for read, _ in verdict.stale} == set(APIS)


# -- the model on real backends -----------------------------------------------


def run_model(backend: Backend, plan: Plan) -> tuple[list[dict[str, Any]], Any]:
    shared, barrier, group = start_model(
        plan, WORKERS, backend.settings_overrides, timeout=RUN_TIMEOUT
    )
    with group:
        barrier.wait()
        results = group.join()
    shared.progress.close()
    return results, check(results, push=plan.push)


def _assert_and_record(
    scenario: str, backend_name: str, results: list[dict[str, Any]], verdict: Any
) -> None:
    exceptions = sum(r["exception_count"] for r in results)
    notes = [f"{verdict.committed:,} committed updates"]
    if verdict.unrecorded_stale:
        notes.append(f"{verdict.unrecorded_stale} reads behind unrecorded changes")
    record(
        Figure(
            scenario=scenario,
            backend=backend_name,
            operations=verdict.operations,
            stale_reads=len(verdict.stale),
            faults="-",
            exceptions=exceptions,
            recovery="-",
            notes="; ".join(notes),
        )
    )
    tracebacks = [t for r in results for t in r["exceptions"]]
    assert exceptions == 0, "\n".join(tracebacks[:3])
    assert verdict.stale == [], verdict.describe()
    assert verdict.operations == WORKERS * MODEL_OPS


@pytest.mark.parametrize("shared_backend", MODEL_BACKENDS, indirect=True)
def test_no_stale_read(shared_backend: Backend) -> None:
    apis = (
        APIS if shared_backend.atomic_add else tuple(a for a in APIS if a != "dogpile")
    )
    plan = Plan(apis=apis, objects=OBJECTS, ops=MODEL_OPS, seed=1)
    results, verdict = run_model(shared_backend, plan)
    _assert_and_record("model", shared_backend.name, results, verdict)


@pytest.mark.parametrize("shared_backend", ["redis"], indirect=True)
def test_no_stale_read_in_push_mode(shared_backend: Backend) -> None:
    """Push mode, with its documented allowance: a process must see a
    change once the message reached it (see tests/stress/model.py)."""
    plan = Plan(objects=OBJECTS, ops=MODEL_OPS, push=True, seed=2)
    with shared_backend.syncache_settings(PUSH=True):
        results, verdict = run_model(shared_backend, plan)
    messages = sum(len(keys) for r in results for keys in r["arrivals"].values())
    assert messages > 0, "the listeners received no message"
    _assert_and_record("model, push", shared_backend.name, results, verdict)


# -- get_or_create and a creator in flight ------------------------------------


def create_slowly(index: int, started: Any, go: Any, version: Any) -> Any:
    """Run get_or_create with a creator that reads the truth, then waits
    until the parent has changed it and invalidated the key."""

    def creator() -> int:
        seen = int(version.value)
        started.set()
        go.wait(60)
        return seen

    return get_or_create(["stress", "in-flight"], creator, None)


@pytest.mark.parametrize("hard", [True, False], ids=["hard", "soft"])
def test_invalidate_is_not_undone_by_a_creator_in_flight(
    shared_lock_backend: Backend, hard: bool
) -> None:
    """A creator that read the source before an invalidation stores its
    value after it: that value must not be served as fresh (before the
    fix, it was, for ever with expiretime=None)."""
    started, go = make_event(), make_event()
    version = ctx.Value("q", 1)
    with start_processes(
        create_slowly,
        1,
        started,
        go,
        version,
        settings_overrides=shared_lock_backend.settings_overrides,
        timeout=120,
    ) as worker:
        assert started.wait(60)
        version.value = 2  # the source of truth changes...
        invalidate(["stress", "in-flight"], hard=hard)  # ...and is invalidated
        go.set()
        [created] = worker.join()
    assert created == 1, "the creator read the source before the change"
    value = get_or_create(["stress", "in-flight"], lambda: int(version.value), None)
    assert value == 2, "a read after the invalidation returned got the old value"
