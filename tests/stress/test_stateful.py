"""The model's rule in one process, explored by Hypothesis stateful testing.

Several holders (``LocalSyncCache`` instances sharing an id, synchronizers
sharing a key) stand for the processes of the multi-process model; every
operation runs to completion before the next, so every update is committed
before the next read's check, and the rule becomes: *every read returns
the current version*. Hypothesis chooses the sequence of updates, reads,
flushes of the whole cache and evictions of single generation keys, and
shrinks any sequence that breaks the rule to a minimal one.
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import pytest
from django.core.cache import caches
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)

from syncache import (
    GenerationSynchronizer,
    Group,
    LocalSyncCache,
    LockNotSupported,
    check_all,
    get_or_create,
)
from syncache.dogpile import FRESH_SUFFIX, invalidate
from syncache.keys import make_cache_key
from syncache.medium import get_medium
from tests.harness.backends import Backend
from tests.stress.report import Figure, record
from tests.stress.sizes import STATEFUL_EXAMPLES, STATEFUL_STEPS

HOLDERS = 3
OBJECTS = 2
#: Every backend of the matrix but django_redis (the same server as redis).
BACKENDS = ("locmem", "file", "sqlite", "postgres", "redis", "memcached")

_runs = itertools.count()


class SingleProcessModel(RuleBasedStateMachine):
    """Holders of four APIs over a versioned source of truth."""

    apis = ("local", "sync", "group", "dogpile")
    #: The backend can hold a lock; without one, get_or_create raises the
    #: documented LockNotSupported.
    locks = True
    #: Operations and sequences run, for the figures: machines are not kept
    #: (their caches would stay registered, and every check would read them).
    counts: ClassVar[list[int]] = [0, 0]

    def __init__(self) -> None:
        super().__init__()
        self.run = next(_runs)
        self.truth: dict[tuple[str, int], int] = {}
        self.local = [
            LocalSyncCache(f"stateful-{self.run}", unique_ids=False)
            for _ in range(HOLDERS)
        ]
        self.syncs = [
            [
                GenerationSynchronizer(["stateful", str(self.run), str(o)])
                for o in range(OBJECTS)
            ]
            for _ in range(HOLDERS)
        ]
        self.sync_state: list[dict[int, int]] = [{} for _ in range(HOLDERS)]
        self.counts[1] += 1

    def group(self, obj: int) -> Group:
        return Group(f"stateful-{self.run}", obj=obj)

    def dogpile_key(self, obj: int) -> list[str]:
        return ["stateful", str(self.run), "dogpile", str(obj)]

    def source(self, api: str, obj: int) -> int:
        return self.truth.get((api, obj), 0)

    @initialize()
    def first_check(self) -> None:
        check_all()
        self.read_all()

    @rule(
        api=st.sampled_from(apis),
        obj=st.integers(0, OBJECTS - 1),
        holder=st.integers(0, HOLDERS - 1),
    )
    def update(self, api: str, obj: int, holder: int) -> None:
        self.counts[0] += 1
        self.truth[(api, obj)] = self.source(api, obj) + 1
        if api == "local":
            self.local[holder].clear()
        elif api == "sync":
            self.syncs[holder][obj].mark_updated()
            self.sync_state[holder].pop(obj, None)
        elif api == "group":
            self.group(obj).bump()
        elif self.locks:
            invalidate(self.dogpile_key(obj), hard=True)

    @rule(api=st.sampled_from(apis), obj=st.integers(0, OBJECTS - 1))
    def read(self, api: str, obj: int) -> None:
        """Check, then read ``obj`` through every holder in turn."""
        for holder in range(HOLDERS):
            self.read_through(api, obj, holder)

    @rule()
    def read_all(self) -> None:
        """A request that reads every object through every API and holder:
        any earlier update that was not seen shows here."""
        for api in self.apis:
            for obj in range(OBJECTS):
                self.read(api, obj)

    def read_through(self, api: str, obj: int, holder: int) -> None:
        self.counts[0] += 1
        expected = self.source(api, obj)
        if api == "local":
            check_all()
            cache = self.local[holder]
            if obj not in cache:
                cache[obj] = expected
            value = cache[obj]
        elif api == "sync":
            sync = self.syncs[holder][obj]
            state = self.sync_state[holder]
            if sync.is_expired():
                state.pop(obj, None)
                sync.refresh()
            value = state.setdefault(obj, expected)
        elif api == "group":
            value = self.group(obj).get_or_set("value", lambda: expected)
        elif self.locks:
            value = get_or_create(self.dogpile_key(obj), lambda: expected, None)
        else:
            with pytest.raises(LockNotSupported):
                get_or_create(self.dogpile_key(obj), lambda: expected, None)
            return
        assert value == expected, f"{api} holder {holder} read a stale version"

    @rule()
    def flush(self) -> None:
        """The whole cache is emptied (a restart, FLUSHALL, clear())."""
        caches["default"].clear()

    @rule(api=st.sampled_from(apis), obj=st.integers(0, OBJECTS - 1))
    def evict(self, api: str, obj: int) -> None:
        """One key syncache relies on disappears (LRU, cull, expiry)."""
        if api == "local":
            keys = [self.local[0].cache_key]
        elif api == "sync":
            keys = [self.syncs[0][obj].cache_key]
        elif api == "group":
            keys = [self.group(obj).local_key]
        else:
            value_key = make_cache_key(self.dogpile_key(obj))
            keys = [value_key, value_key + FRESH_SUFFIX]
        medium = get_medium()
        for key in keys:
            medium.delete(key)

    @rule()
    def evict_epoch(self) -> None:
        get_medium().delete(get_medium().epoch_key)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_single_process_model(backend: Backend, fresh_registry: Any) -> None:
    class Machine(SingleProcessModel):
        locks = backend.atomic_add
        counts: ClassVar[list[int]] = [0, 0]

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=STATEFUL_EXAMPLES,
            stateful_step_count=STATEFUL_STEPS,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    record(
        Figure(
            scenario="stateful, 1 process",
            backend=backend.name,
            operations=Machine.counts[0],
            stale_reads=0,
            faults="flush, evictions",
            exceptions=0,
            recovery="-",
            notes=f"{Machine.counts[1]} Hypothesis sequences",
        )
    )
