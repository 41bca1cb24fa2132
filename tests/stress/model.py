"""The linearizable-at-check model: a workload, its log, and the checker.

The source of truth is a shared-memory array of integers, one per object
and API: an update increments one (under the array's lock, so every update
writes a version never written before), then invalidates through syncache:

* ``local``: a :class:`~syncache.LocalSyncCache` per group of objects,
  read after :func:`~syncache.check_all` (what the middleware does at the
  start of a request), filled from the truth on a miss; an update calls
  ``clear()``;
* ``sync``: a :class:`~syncache.GenerationSynchronizer` per object over a
  plain dict, checked with ``is_expired()`` (then emptied and
  ``refresh()``-ed); an update calls ``mark_updated()`` and drops the
  writer's own copy;
* ``group``: :meth:`syncache.Group.get_or_set` per object; an update bumps
  the group;
* ``dogpile``: :func:`syncache.get_or_create` per object (``expiretime=None``);
  an update calls ``invalidate(hard=True)``.

Every operation takes a ticket from one counter shared by all processes
(under its lock, so tickets are totally ordered and respect real time): a
read takes it *before* its check, an update *after* its invalidation
returned. The rule the checker applies:

    A read whose ticket is larger than the ticket of a committed update of
    the same object must return that update's version or a newer one.

"Committed" means the invalidation went through: no backend error was
logged during the update, and for ``local`` and ``sync`` the generation was
written (``sync_gen`` is not None). An update whose invalidation failed is
the documented "change the backend did not take" (docs/limits.rst); the
checker counts those, and the stale reads they explain, separately.

In push mode (``SYNCACHE["PUSH"]``) a process learns of another's change
when the pub/sub message arrives, not when ``mark_updated()`` returns: that
is push's documented guarantee (docs/push.rst). So for ``local`` and
``sync`` in push mode the checker requires the new version only from reads
whose check began after the message reached the reader's process. Each
worker records when its listener noted each message (a ticket taken just
after the listener's ``note()``); messages of one key arrive in the order
Redis executed the bumps, which is the order of the generations they wrote
(``INCR``), so the j-th message of a key is the bump with the j-th
generation.
"""

from __future__ import annotations

import math
import os
import random
import time
import traceback
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

APIS = ("local", "sync", "group", "dogpile")
#: APIs whose checks skip the cache read in push mode.
PUSH_APIS = frozenset({"local", "sync"})
#: LocalSyncCache instances per process (objects are spread over them).
LOCAL_CACHES = 4
#: The value of ``phase`` that tells the workers to stop.
STOP = -1
#: Seconds the parent waits for one worker's progress report.
PROGRESS_TIMEOUT = 120.0

_MISSING = object()


class Op(NamedTuple):
    """One operation of one worker, as logged."""

    worker: int
    kind: str  # "read" or "update"
    api: str
    obj: int
    #: read: the version returned; update: the version written. -1 when
    #: the operation raised.
    version: int
    #: read: taken before its check; update: after its invalidation.
    ticket: int
    #: update: the invalidation went through (see the module docstring).
    committed: bool
    #: No backend error was logged during the operation.
    clean: bool
    phase: int
    #: update: the generation key invalidated, and the generation written
    #: (push mode maps messages to bumps with them).
    key: str
    generation: Any
    #: time.monotonic() when it started (one clock for every process of the
    #: host), and how long it took.
    started: float
    seconds: float


@dataclass(frozen=True)
class Plan:
    """What the workers of one run do."""

    apis: tuple[str, ...] = APIS
    objects: int = 8
    #: Operations per worker; 0: run phases until the parent says STOP.
    ops: int = 0
    #: Per phase: operations a worker makes before it reports progress.
    phase_ops: tuple[int, ...] = ()
    #: Per phase: count only from the worker's first operation without a
    #: backend error (phases after a fault was repaired).
    recovering: tuple[bool, ...] = ()
    update_ratio: float = 0.3
    #: Filler keys written after each operation (eviction runs), and whether
    #: to look up, before each operation, whether its generation key is
    #: there (counting evictions seen).
    fillers: int = 0
    #: Push mode: wait for the listener, record message arrivals.
    push: bool = False
    #: ``lock_timeout`` of get_or_create: how long a creator cut off from the
    #: cache in the middle (its release failed) blocks the callers that have
    #: no value (shorter than the 30 s default, so fault runs stay short).
    lock_timeout: float = 2.0
    seed: int = 0
    #: The deliberately broken workload: updates skip the invalidation, so
    #: the checker must find stale reads (it proves the checker can fail).
    drop_invalidations: bool = False


@dataclass
class Shared:
    """What the workers and the parent share (multiprocessing objects)."""

    truth: Any
    clock: Any
    phase: Any
    progress: Any

    @classmethod
    def create(cls, plan: Plan, ctx: Any) -> Shared:
        return cls(
            truth=ctx.Array("q", len(APIS) * plan.objects),
            clock=ctx.Value("q", 0),
            phase=ctx.Value("i", 0),
            progress=ctx.Queue(),
        )


def tick(clock: Any) -> int:
    """Take the next ticket of the shared clock."""
    with clock.get_lock():
        clock.value += 1
        return int(clock.value)


class _FailureCount:
    """Counts the backend errors syncache logs in this process.

    ``Medium.attempt`` reports every error it turns into "expired" through
    ``_log_failure`` (before its rate limit): wrapping it observes them
    all without changing what syncache does.
    """

    def __init__(self) -> None:
        from syncache.medium import get_medium

        self.count = 0
        medium = get_medium()
        real = medium._log_failure

        def counting(action: str, key: str, error: Exception) -> None:
            self.count += 1
            real(action, key, error)

        medium._log_failure = counting  # type: ignore[method-assign]


class Workload:
    """One worker's caches and its log."""

    def __init__(self, index: int, shared: Shared, plan: Plan) -> None:
        from syncache import GenerationSynchronizer, Group, LocalSyncCache

        self.index = index
        self.shared = shared
        self.plan = plan
        self.failures = _FailureCount()
        self.local = [LocalSyncCache(f"stress-local-{i}") for i in range(LOCAL_CACHES)]
        objects = range(plan.objects)
        self.syncs = {
            o: GenerationSynchronizer(["stress", "sync", str(o)]) for o in objects
        }
        self.sync_state: dict[int, int] = {}
        self.groups = {o: Group("stress", obj=o) for o in objects}
        self.dogpile_keys = {o: ["stress", "dogpile", str(o)] for o in objects}
        self.ops: list[Op] = []
        self.exceptions: list[str] = []
        self.exception_count = 0
        self.arrivals: dict[str, list[int]] = defaultdict(list)
        self.evictions_seen = 0
        self.fillers_refused = 0
        self._fillers = 0

    # -- set-up -------------------------------------------------------------

    def start(self) -> None:
        """First check (it starts the push listener), and in push mode wait
        until the subscription is confirmed and record message arrivals."""
        from syncache import check_all

        check_all()
        if not self.plan.push:
            return
        from syncache.push import listener_for

        listener = listener_for(None)
        if listener is None or not listener.wait_trusted(PROGRESS_TIMEOUT):
            raise RuntimeError(f"push listener not trusted: {listener!r}")
        real_note = listener.note
        clock = self.shared.clock

        def note(key: str) -> None:
            real_note(key)
            # After note(): from now on no check of this process is quiet.
            self.arrivals[key].append(tick(clock))

        listener.note = note  # type: ignore[method-assign]

    # -- the truth ------------------------------------------------------------

    def _slot(self, api: str, obj: int) -> int:
        return APIS.index(api) * self.plan.objects + obj

    def truth(self, api: str, obj: int) -> int:
        return int(self.shared.truth[self._slot(api, obj)])

    def write_truth(self, api: str, obj: int) -> int:
        truth = self.shared.truth
        slot = self._slot(api, obj)
        with truth.get_lock():
            truth[slot] += 1
            return int(truth[slot])

    # -- operations -------------------------------------------------------------

    def read(self, api: str, obj: int) -> tuple[int, int]:
        """Check, then read ``obj`` through ``api``; return (ticket, version)."""
        from syncache import check_all, get_or_create

        ticket = tick(self.shared.clock)
        if api == "local":
            check_all()
            cache = self.local[obj % LOCAL_CACHES]
            value = cache.get(obj, _MISSING)
            if value is _MISSING:
                value = self.truth(api, obj)
                cache[obj] = value
            return ticket, int(value)
        if api == "sync":
            sync = self.syncs[obj]
            if sync.is_expired():
                self.sync_state.pop(obj, None)
                sync.refresh()
            state = self.sync_state.get(obj)
            if state is None:
                state = self.sync_state[obj] = self.truth(api, obj)
            return ticket, state
        if api == "group":
            return ticket, int(
                self.groups[obj].get_or_set("value", lambda: self.truth(api, obj))
            )
        return ticket, int(
            get_or_create(
                self.dogpile_keys[obj],
                lambda: self.truth(api, obj),
                None,
                lock_timeout=self.plan.lock_timeout,
            )
        )

    def update(self, api: str, obj: int) -> tuple[int, int, str, Any, bool]:
        """Write the truth, then invalidate; return (ticket, version, key,
        generation, whether the generation was written)."""
        from syncache.dogpile import invalidate

        version = self.write_truth(api, obj)
        key, generation, written = "", None, True
        if self.plan.drop_invalidations:
            pass
        elif api == "local":
            cache = self.local[obj % LOCAL_CACHES]
            cache.clear()
            key, generation = cache.cache_key, cache.sync_gen
            written = generation is not None
        elif api == "sync":
            sync = self.syncs[obj]
            sync.mark_updated()
            # The writer adopted the new generation: its own copy must go.
            self.sync_state.pop(obj, None)
            key, generation = sync.cache_key, sync.sync_gen
            written = generation is not None
        elif api == "group":
            self.groups[obj].bump()
            key = self.groups[obj].local_key
        else:
            invalidate(self.dogpile_keys[obj], hard=True)
        return tick(self.shared.clock), version, key, generation, written

    def _probe_eviction(self, api: str, obj: int) -> None:
        from syncache.medium import get_medium

        if api == "local":
            key = self.local[obj % LOCAL_CACHES].cache_key
        elif api == "sync":
            key = self.syncs[obj].cache_key
        elif api == "group":
            key = self.groups[obj].local_key
        else:
            return
        if get_medium().get(key) is None:
            self.evictions_seen += 1

    def _fill(self, rng: random.Random) -> None:
        """Write filler keys: noise, not the model's business. A memcached
        in 1 MB sometimes refuses them ("out of memory storing object")."""
        from django.core.cache import caches

        start, self._fillers = self._fillers, self._fillers + self.plan.fillers
        try:
            caches["default"].set_many(
                {
                    f"filler:{self.index}:{n}": "x" * rng.randint(1, 200)
                    for n in range(start, self._fillers)
                },
                timeout=None,
            )
        except Exception:
            self.fillers_refused += 1

    def step(self, rng: random.Random, phase: int) -> Op:
        """One random operation, logged."""
        api = rng.choice(self.plan.apis)
        obj = rng.randrange(self.plan.objects)
        kind = "update" if rng.random() < self.plan.update_ratio else "read"
        if self.plan.fillers:
            self._probe_eviction(api, obj)
        failures = self.failures.count
        started = time.monotonic()
        key, generation, written = "", None, True
        try:
            if kind == "update":
                ticket, version, key, generation, written = self.update(api, obj)
            else:
                ticket, version = self.read(api, obj)
            raised = False
        except Exception:
            self.exception_count += 1
            if len(self.exceptions) < 5:
                self.exceptions.append(traceback.format_exc())
            ticket, version, raised = tick(self.shared.clock), -1, True
        seconds = time.monotonic() - started
        clean = self.failures.count == failures and not raised
        op = Op(
            worker=self.index,
            kind=kind,
            api=api,
            obj=obj,
            version=version,
            ticket=ticket,
            committed=kind == "update" and clean and written,
            clean=clean,
            phase=phase,
            key=key,
            generation=generation,
            started=started,
            seconds=seconds,
        )
        self.ops.append(op)
        if self.plan.fillers:
            self._fill(rng)
        return op

    # -- runs -------------------------------------------------------------------

    def run(self, rng: random.Random) -> None:
        plan = self.plan
        if plan.ops:
            for _ in range(plan.ops):
                self.step(rng, 0)
            return
        phase_value = self.shared.phase
        current, counted, reported, recovered = None, 0, True, True
        while True:
            phase = int(phase_value.value)
            if phase == STOP:
                return
            if phase != current:
                current, counted, reported = phase, 0, False
                recovered = not plan.recovering[phase]
            op = self.step(rng, phase)
            recovered = recovered or op.clean
            if recovered:
                counted += 1
            if not reported and counted >= plan.phase_ops[phase]:
                self.shared.progress.put((self.index, phase))
                reported = True

    def result(self) -> dict[str, Any]:
        return {
            "worker": self.index,
            "pid": os.getpid(),
            "ops": self.ops,
            "exceptions": self.exceptions,
            "exception_count": self.exception_count,
            "arrivals": dict(self.arrivals),
            "failures": self.failures.count,
            "evictions_seen": self.evictions_seen,
            "fillers_refused": self.fillers_refused,
        }


def run_worker(
    index: int,
    truth: Any,
    clock: Any,
    phase: Any,
    progress: Any,
    barrier: Any,
    plan: Plan,
) -> dict[str, Any]:
    """Entry point of a model worker (``tests.harness.workers``)."""
    workload = Workload(index, Shared(truth, clock, phase, progress), plan)
    workload.start()
    barrier.wait()
    workload.run(random.Random(plan.seed * 1009 + index))
    return workload.result()


def start_model(
    plan: Plan, workers: int, settings_overrides: dict[str, Any], *, timeout: float
) -> tuple[Shared, Any, Any]:
    """Start ``workers`` model workers; return (shared, barrier, group).

    The workers wait at the barrier (``workers + 1`` parties) once they are
    set up: the parent's ``barrier.wait()`` starts the run.
    """
    from tests.harness.workers import ctx, make_barrier, start_processes

    shared = Shared.create(plan, ctx)
    barrier = make_barrier(workers + 1, timeout=timeout)
    group = start_processes(
        run_worker,
        workers,
        shared.truth,
        shared.clock,
        shared.phase,
        shared.progress,
        barrier,
        plan,
        settings_overrides=settings_overrides,
        timeout=timeout,
    )
    return shared, barrier, group


def wait_progress(shared: Shared, group: Any, phase: int, workers: int) -> None:
    """Block until every worker reported its operations of ``phase``.

    Blocks on the progress queue; every second without a report it checks
    that the workers are alive, so a crashed worker fails the test at once
    (its traceback comes from ``group.join()``).
    """
    import queue

    waiting = set(range(workers))
    deadline = time.monotonic() + PROGRESS_TIMEOUT
    while waiting:
        try:
            index, reported = shared.progress.get(timeout=1.0)
        except queue.Empty:
            if not all(p.is_alive() for p in group.processes):
                group.join()  # raises the workers' errors
                raise RuntimeError(
                    "a worker exited before reporting progress"
                ) from None
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"workers {sorted(waiting)} never finished phase {phase}"
                ) from None
            continue
        if reported == phase:
            waiting.discard(index)


def set_phase(shared: Shared, phase: int) -> None:
    with shared.phase.get_lock():
        shared.phase.value = phase


# -- the checker --------------------------------------------------------------


@dataclass
class Verdict:
    """What the checker found in one run's log."""

    reads: int = 0
    updates: int = 0
    committed: int = 0
    #: Stale reads: older than a committed update whose ticket is smaller.
    stale: list[tuple[Op, Op]] = field(default_factory=list)
    #: Reads older than an update whose invalidation failed (documented:
    #: "a change the backend did not take"), and not stale by the rule.
    unrecorded_stale: int = 0

    @property
    def operations(self) -> int:
        return self.reads + self.updates

    def stale_count(self, *, phases: Iterable[int]) -> int:
        """Stale reads made in ``phases``."""
        wanted = set(phases)
        return sum(1 for read, _ in self.stale if read.phase in wanted)

    def describe(self, limit: int = 8) -> str:
        lines = [
            f"worker {read.worker} read {read.api} object {read.obj} in phase "
            f"{read.phase} (ticket {read.ticket}): version {read.version}, but "
            f"worker {update.worker} committed version {update.version} at "
            f"ticket {update.ticket}"
            for read, update in self.stale[:limit]
        ]
        if len(self.stale) > limit:
            lines.append(f"... and {len(self.stale) - limit} more")
        return "\n".join(lines)


def _arrival_lookup(
    ops: Sequence[Op], arrivals: dict[int, dict[str, list[int]]]
) -> Callable[[Op, int], float]:
    """Return ``arrival(update, worker)``: the ticket at which the message of
    ``update`` reached ``worker`` (inf when it never did)."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.kind == "update" and op.api in PUSH_APIS and op.generation is not None:
            by_key[op.key].append(op)
    rank: dict[tuple[int, int], int] = {}
    for key_ops in by_key.values():
        for position, op in enumerate(sorted(key_ops, key=lambda o: o.generation)):
            rank[(op.worker, op.ticket)] = position

    def arrival(update: Op, worker: int) -> float:
        position = rank.get((update.worker, update.ticket))
        received = arrivals.get(worker, {}).get(update.key, [])
        if position is None or position >= len(received):
            return math.inf
        return received[position]

    return arrival


def check(results: Sequence[dict[str, Any]], *, push: bool = False) -> Verdict:
    """Replay the workers' logs and find the stale reads (see the module
    docstring for the rule)."""
    ops = [op for result in results for op in result["ops"]]
    arrival = _arrival_lookup(ops, {r["worker"]: r["arrivals"] for r in results})
    verdict = Verdict()
    committed: dict[tuple[str, int], list[Op]] = defaultdict(list)
    failed: dict[tuple[str, int], list[Op]] = defaultdict(list)
    reads: list[Op] = []
    for op in ops:
        if op.kind == "update":
            verdict.updates += 1
            if op.committed:
                verdict.committed += 1
                committed[(op.api, op.obj)].append(op)
            elif op.version >= 0:
                failed[(op.api, op.obj)].append(op)
        elif op.version >= 0:
            reads.append(op)
        else:
            verdict.reads += 1  # it raised: counted, not checked
    verdict.reads += len(reads)
    # Per object: updates in ticket order with the running maximum version
    # (tickets are unique), for a binary search per read.
    ordered: dict[tuple[str, int], tuple[list[int], list[Op]]] = {}
    for target, updates in committed.items():
        updates.sort(key=lambda op: op.ticket)
        best: list[Op] = []
        for op in updates:
            best.append(op if not best or op.version > best[-1].version else best[-1])
        ordered[target] = ([op.ticket for op in updates], best)
    newest_first = {
        target: sorted(updates, key=lambda op: -op.version)
        for target, updates in committed.items()
    }
    for read in reads:
        target = (read.api, read.obj)
        if push and read.api in PUSH_APIS:
            required = next(
                (
                    update
                    for update in newest_first.get(target, [])
                    if update.ticket < read.ticket
                    and (
                        update.worker == read.worker
                        or arrival(update, read.worker) < read.ticket
                    )
                ),
                None,
            )
        else:
            tickets, best = ordered.get(target, ([], []))
            position = bisect_left(tickets, read.ticket)
            required = best[position - 1] if position else None
        if required is not None and read.version < required.version:
            verdict.stale.append((read, required))
        elif any(
            update.ticket < read.ticket and read.version < update.version
            for update in failed.get(target, [])
        ):
            verdict.unrecorded_stale += 1
    verdict.stale.sort(key=lambda pair: pair[0].ticket)
    return verdict


def latencies(
    results: Sequence[dict[str, Any]],
    phases: Iterable[int],
    apis: Iterable[str] = APIS,
) -> list[float]:
    """Seconds of every operation made in ``phases`` through ``apis``."""
    wanted, through = set(phases), set(apis)
    return [
        op.seconds
        for r in results
        for op in r["ops"]
        if op.phase in wanted and op.api in through
    ]


def recovery(
    results: Sequence[dict[str, Any]],
    phase: int,
    apis: Iterable[str] = APIS,
) -> tuple[int, float]:
    """After a repair: the most operations through ``apis`` any worker made
    in ``phase`` before its first one without a backend error (0: the first
    one went through), and the longest such first clean operation took."""
    through = set(apis)
    worst_ops, worst_seconds = 0, 0.0
    for result in results:
        in_phase = [
            op for op in result["ops"] if op.phase == phase and op.api in through
        ]
        first = next((i for i, op in enumerate(in_phase) if op.clean), None)
        if first is None:
            return len(in_phase), math.inf
        worst_ops = max(worst_ops, first)
        worst_seconds = max(worst_seconds, in_phase[first].seconds)
    return worst_ops, worst_seconds


__all__ = [
    "APIS",
    "STOP",
    "Op",
    "Plan",
    "Shared",
    "Verdict",
    "Workload",
    "check",
    "latencies",
    "recovery",
    "run_worker",
    "set_phase",
    "start_model",
    "tick",
    "wait_progress",
]
