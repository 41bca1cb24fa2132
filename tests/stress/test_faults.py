"""The model under faults: servers killed, paused, flushed, evicting.

Eight processes run the model workload (``tests/stress/model.py``) against
a Redis or memcached server of the test's own (0.5 s client timeouts),
while the test, between phases, kills the server and restarts it, pauses it
with SIGSTOP (calls time out instead of failing fast) and resumes it, and
flushes it. Phases are driven by the workers' progress (each reports when
it has made its operations of the phase), never by sleeping. For every
phase the test checks the log with the model's rule and measures:

* exceptions that reached the calling code (the contract: none);
* stale reads (none, in any phase);
* the longest operation while the server was down or paused, against the
  client timeout (asserted below 10 x the timeout: an operation makes a few
  round trips, each bounded by the timeout; the figure is reported), and
  for ``get_or_create``, which may wait for a lock left by a creator cut
  off mid-way, that bound plus its ``lock_timeout``;
* recovery: how many checks (operations that do not wait for a lock)
  each worker made after the server came back before one went through
  without a backend error (the contract: the first one), and how long that
  first clean check took.

Redis and memcached are used with Django's default client options but
for the timeouts. For memcached that is the point: with those defaults
pymemcache's ``HashClient`` answers defaults for a second after a failure
and gives a server up for a minute after an outage, and syncache must not
depend on either (its medium talks through a copy of the cache whose
client raises on every failure; the two tests at the end pin both).
"""

from __future__ import annotations

import socket
import statistics
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from syncache import GenerationSynchronizer
from tests.harness.backends import OUTAGE_TIMEOUT, Backend, isolated_backend
from tests.harness.servers import LOOPBACK, ManagedServer, RedisServer
from tests.stress.model import (
    STOP,
    Plan,
    check,
    latencies,
    recovery,
    set_phase,
    start_model,
    wait_progress,
)
from tests.stress.report import Figure, record
from tests.stress.servers import (
    EVICTING_MEMCACHED_ARGS,
    TunedMemcachedServer,
    pause,
    resume,
)
from tests.stress.sizes import (
    EVICTION_OPS,
    FAULT_ROUNDS,
    FILLERS,
    OBJECTS,
    OUTAGE_OPS,
    PHASE_OPS,
    WORKERS,
)

RUN_TIMEOUT = 1_800.0
#: The bound asserted on one operation while the server is down or paused,
#: in client timeouts (generous: the figure is what matters).
LATENCY_BOUND = 10
#: The APIs whose operations never wait for a lock. A get_or_create caller
#: with no value waits for the creator; a creator cut off from the cache
#: between taking the lock and releasing it leaves the lock until its
#: ``lock_timeout`` (documented: "it expires by itself"), so the bound of a
#: get_or_create is that timeout more.
NO_LOCK_APIS = ("local", "sync", "group")
#: memcached and the database cache round lock timeouts up to whole seconds,
#: plus one.
LOCK_ROUNDING = 2.0


@pytest.fixture(params=["redis", "memcached"])
def faulty(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """A server of the test's own, which it kills, pauses and flushes."""
    with isolated_backend(request.param) as backend:
        yield backend


def flush(server: ManagedServer) -> None:
    """FLUSHALL (Redis) or flush_all (memcached), sent as a client would."""
    assert server.port is not None
    with socket.create_connection((LOOPBACK, server.port), timeout=10) as sock:
        sock.sendall(
            b"FLUSHALL\r\n" if isinstance(server, RedisServer) else b"flush_all\r\n"
        )
        assert sock.recv(64).startswith((b"+OK", b"OK"))


@dataclass(frozen=True)
class Phase:
    fault: str  # "none", "kill", "pause", "flush"
    stage: str  # "before", "during", "after"
    ops: int
    recovering: bool


def fault_phases(rounds: int) -> list[Phase]:
    phases = [Phase("none", "before", PHASE_OPS, False)]
    for _ in range(rounds):
        phases += [
            Phase("kill", "during", OUTAGE_OPS, False),
            Phase("kill", "after", PHASE_OPS, True),
            Phase("pause", "during", OUTAGE_OPS, False),
            Phase("pause", "after", PHASE_OPS, True),
            Phase("flush", "after", PHASE_OPS, False),
        ]
    return phases


def change(server: ManagedServer, phase: Phase) -> None:
    """Inject or repair the fault of ``phase``."""
    if phase.fault == "kill":
        if phase.stage == "during":
            server.kill()
        else:
            server.start()  # the same port: clients keep their address
    elif phase.fault == "pause":
        (pause if phase.stage == "during" else resume)(server)
    elif phase.fault == "flush":
        flush(server)


def test_faults_mid_run(faulty: Backend) -> None:
    server = faulty.server
    assert server is not None
    phases = fault_phases(FAULT_ROUNDS)
    plan = Plan(
        objects=OBJECTS,
        phase_ops=tuple(p.ops for p in phases),
        recovering=tuple(p.recovering for p in phases),
        seed=3,
    )
    shared, barrier, group = start_model(
        plan, WORKERS, faulty.settings_overrides, timeout=RUN_TIMEOUT
    )
    try:
        with group:
            barrier.wait()
            wait_progress(shared, group, 0, WORKERS)
            for index, phase in enumerate(phases[1:], start=1):
                change(server, phase)
                set_phase(shared, index)
                wait_progress(shared, group, index, WORKERS)
            set_phase(shared, STOP)
            results = group.join()
    finally:
        resume(server)  # never leave a stopped server behind
    verdict = check(results)
    exceptions = sum(r["exception_count"] for r in results)
    baseline = statistics.median(latencies(results, [0]))
    failures: list[str] = []
    for fault in ("kill", "pause", "flush"):
        numbers = [i for i, p in enumerate(phases) if p.fault == fault]
        during = [i for i in numbers if phases[i].stage == "during"]
        after = [i for i in numbers if phases[i].stage == "after"]
        slowest = max(latencies(results, during, NO_LOCK_APIS), default=0.0)
        waited = max(latencies(results, numbers, ["dogpile"]), default=0.0)
        recoveries = [recovery(results, i, NO_LOCK_APIS) for i in after]
        late_ops = max(ops for ops, _ in recoveries)
        late_seconds = max(seconds for _, seconds in recoveries)
        notes = [f"median op {baseline * 1000:.1f} ms before"]
        if during:
            notes.append(
                f"slowest op while down {slowest:.2f} s = "
                f"{slowest / OUTAGE_TIMEOUT:.1f} x the {OUTAGE_TIMEOUT:g} s timeout"
            )
        notes.append(f"slowest get_or_create {waited:.2f} s")
        record(
            Figure(
                scenario={"kill": "kill + restart", "pause": "SIGSTOP + SIGCONT"}.get(
                    fault, "FLUSHALL" if faulty.name == "redis" else "flush_all"
                ),
                backend=faulty.name,
                operations=sum(
                    1 for r in results for op in r["ops"] if op.phase in numbers
                ),
                stale_reads=verdict.stale_count(phases=numbers),
                faults=f"{len(after)} x {fault}",
                exceptions=sum(
                    1
                    for r in results
                    for op in r["ops"]
                    if op.phase in numbers and op.version < 0
                ),
                recovery=(
                    f"check #{late_ops + 1} after repair ({late_seconds * 1000:.0f} ms)"
                ),
                notes="; ".join(notes),
            )
        )
        if late_ops:
            failures.append(f"{fault}: a worker needed {late_ops + 1} operations")
        if slowest >= LATENCY_BOUND * OUTAGE_TIMEOUT:
            failures.append(f"{fault}: an operation took {slowest:.2f} s")
        if waited >= plan.lock_timeout + LOCK_ROUNDING + LATENCY_BOUND * OUTAGE_TIMEOUT:
            failures.append(f"{fault}: get_or_create took {waited:.2f} s")
    tracebacks = [t for r in results for t in r["exceptions"]]
    assert exceptions == 0, "\n".join(tracebacks[:3])
    assert verdict.stale == [], verdict.describe()
    assert failures == []


# -- memcached evicting constantly --------------------------------------------


def test_memcached_evicting_generation_keys() -> None:
    """memcached in 1 MB of 2 KB chunks, plain LRU, while every worker
    writes filler keys after each operation: generation keys (the hot ones
    and the epoch included) are evicted all the time. Missing means
    expired: no stale read."""
    server = TunedMemcachedServer(EVICTING_MEMCACHED_ARGS)
    with isolated_backend("memcached", server=server) as backend:
        plan = Plan(objects=OBJECTS, ops=EVICTION_OPS, fillers=FILLERS, seed=4)
        _, barrier, group = start_model(
            plan, WORKERS, backend.settings_overrides, timeout=RUN_TIMEOUT
        )
        before = int(server.stats()["evictions"])
        with group:
            barrier.wait()
            results = group.join()
        evictions = int(server.stats()["evictions"]) - before
    verdict = check(results)
    seen = sum(r["evictions_seen"] for r in results)
    exceptions = sum(r["exception_count"] for r in results)
    record(
        Figure(
            scenario="tiny -m, evicting",
            backend="memcached",
            operations=verdict.operations,
            stale_reads=len(verdict.stale),
            faults=f"{evictions:,} evictions",
            exceptions=exceptions,
            recovery="-",
            notes=f"generation keys found evicted {seen:,} times; "
            f"{sum(r['fillers_refused'] for r in results)} filler writes refused",
        )
    )
    assert exceptions == 0, "\n".join(t for r in results for t in r["exceptions"][:1])
    assert verdict.stale == [], verdict.describe()
    assert seen > 0, "no generation key was ever evicted: the test proved nothing"


# -- pymemcache's defaults ----------------------------------------------------
#
# With Django's default PyMemcacheCache options, pymemcache's HashClient
# answers every call with a default for retry_timeout (1 s) after one failed
# call, without reaching the server (incr() answers False), and an outage
# longer than about two retry_timeouts marks the server dead for
# dead_timeout (60 s). syncache's memcached medium talks through a copy of
# the alias's cache whose client raises on every failure instead. The
# options below change the alias's own client only, to reach those states
# without waiting.


def test_memcached_bump_after_a_timeout_is_not_lost() -> None:
    """After a call timed out on a paused server, a bump either reaches the
    server or reports its failure (``sync_gen is None``), even though the
    alias's own client would answer defaults for ten minutes."""
    with isolated_backend(
        "memcached", options={"retry_timeout": 600}, aliases=("default", "observer")
    ) as backend:
        server = backend.server
        assert server is not None
        writer = GenerationSynchronizer("lost")
        observer = GenerationSynchronizer("lost", cache_alias="observer")
        assert not observer.is_expired()
        pause(server)
        try:
            assert writer.is_expired(), "the paused server times out: expired"
        finally:
            resume(server)
        writer.mark_updated()
        assert writer.sync_gen is None or observer.is_expired(), (
            f"mark_updated() returned with sync_gen={writer.sync_gen!r} (no "
            f"failure reported) but the server never got the bump"
        )


def test_memcached_recovers_at_the_first_check() -> None:
    """An outage that makes the alias's own client give the server up for a
    minute: syncache uses the server again at its first check."""
    with isolated_backend("memcached", options={"retry_timeout": 0}) as backend:
        server = backend.server
        assert server is not None
        sync = GenerationSynchronizer("dead")
        server.kill()
        for _ in range(4):
            sync.refresh()
            assert sync.sync_gen is None, "the server is down"
        server.start()
        sync.refresh()
        assert sync.sync_gen is not None, "the first check after the restart failed"
