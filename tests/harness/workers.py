"""Run a function in real, separate Python processes with Django set up
exactly like the parent.

The correctness contract is about processes, not threads: separate
interpreters share nothing but the cache backend, so these workers are
``spawn``-ed (never forked from pytest: a fork would inherit the parent's
cache clients, connections and syncache's per-process state, hiding exactly
the bugs the tests look for). ``SYNCACHE_TEST_START_METHOD=forkserver`` trades
some fidelity for speed, see :data:`START_METHOD_ENV`.

Each worker:

1. imports the settings module (``tests.settings``), takes its upper-case
   names, applies the parent's ``settings_overrides`` (the backend's
   ``CACHES``, the test ``DATABASES``, ``SYNCACHE``...), calls
   ``settings.configure()`` and ``django.setup()``;
2. only then unpickles the function and the plain arguments, so a test module
   that imports models or syncache at the top level imports fine
   (synchronisation objects, which only travel as Process arguments, are
   passed separately);
3. reports ``(index, "ok", result)`` or ``(index, "error", traceback)`` on its
   own pipe.

In the parent a collector thread waits on the pipes and the process
sentinels (no polling), aborts the barriers passed to the workers as soon as
one fails, and at the deadline asks stragglers for a stack dump
(faulthandler) before killing them. :class:`WorkerError` carries every
worker's traceback.

Example::

    def bump_then_wait(index, barrier, key):       # module level, importable
        barrier.wait()                              # all workers start together
        return cache.incr(key)

    barrier = make_barrier(4)
    results = run_in_processes(
        bump_then_wait, 4, barrier, "k",
        settings_overrides=backend.settings_overrides,
    )
"""

from __future__ import annotations

import contextlib
import copy
import faulthandler
import gc
import importlib
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from multiprocessing import synchronize
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import TracebackType
from typing import Any

#: ``spawn`` (default) or ``forkserver``. Spawn gives every worker a fresh
#: interpreter, including its own str hash seed, so code that wrongly relies
#: on the builtin ``hash()`` across processes fails as it would in
#: production; it costs ~0.3 s of CPU per worker (interpreter, Django setup,
#: the test module's imports). ``forkserver`` forks workers from a clean
#: server process that pre-imported Django and the cache clients: about 7x
#: cheaper, nothing inherited from the pytest process, but all workers of a
#: run share one hash seed. Use it for quick local iterations only.
START_METHOD_ENV = "SYNCACHE_TEST_START_METHOD"
#: Imported once by the fork server. Only modules that import without
#: configured settings: anything else would kill the server.
_FORKSERVER_PRELOAD = [
    "django.conf",
    "django.db.models",
    "django.core.cache",
    "django.core.cache.backends.db",
    "django.core.cache.backends.filebased",
    "django.core.cache.backends.locmem",
    "django.core.cache.backends.memcached",
    "django.core.cache.backends.redis",
    "django.http",
    "django.test",
    "django.urls",
    "django_redis",
    "psycopg",
    "pymemcache",
    "pytest",
    "redis",
    "tests.harness.workers",
]


def _make_context() -> SpawnContext | ForkServerContext:
    method = os.environ.get(START_METHOD_ENV) or "spawn"
    if method == "forkserver":
        forkserver = multiprocessing.get_context("forkserver")
        forkserver.set_forkserver_preload(_FORKSERVER_PRELOAD)
        return forkserver
    if method != "spawn":
        raise ValueError(
            f"{START_METHOD_ENV} must be spawn or forkserver, not {method!r}"
        )
    return multiprocessing.get_context("spawn")


#: The multiprocessing context every worker and every synchronisation object
#: must come from (a Barrier from another context cannot be passed).
ctx: SpawnContext | ForkServerContext = _make_context()

#: The directory that holds the ``tests`` package; workers import from it.
PROJECT_ROOT = str(Path(__file__).resolve().parents[2])

#: Seconds a whole group of workers may take, spawn included.
DEFAULT_TIMEOUT = 120.0
#: Seconds a worker that reported its result gets to exit.
EXIT_GRACE = 10.0
#: Environment variables copied into every worker (run dir, PG name...).
_ENV_PREFIX = "SYNCACHE_TEST_"
#: Settings attributes that are not settings.
_NOT_SETTINGS = frozenset({"SETTINGS_MODULE"})
#: Settings always sent to workers, even when they equal the settings module.
_ALWAYS_SENT = ("CACHES", "DATABASES", "SYNCACHE")

_MISSING = object()


class WorkerError(Exception):
    """One or more workers failed or timed out.

    ``failures`` maps worker index to its report (a traceback, or why it was
    killed); ``results`` holds what the others returned.
    """

    def __init__(
        self, message: str, failures: dict[int, str], results: dict[int, Any]
    ) -> None:
        super().__init__(message)
        self.failures = failures
        self.results = results


def make_barrier(parties: int, timeout: float | None = 30.0) -> synchronize.Barrier:
    """A Barrier workers (and the parent) can pass as arguments.

    The default timeout turns a worker that died before reaching the barrier
    into a prompt ``BrokenBarrierError`` in the others instead of a hang until
    the group deadline. The group also aborts barriers passed as arguments as
    soon as one worker fails.
    """
    return ctx.Barrier(parties, timeout=timeout)


def make_event() -> synchronize.Event:
    """An Event that can be passed to workers as an argument."""
    return ctx.Event()


def make_lock() -> synchronize.Lock:
    """A Lock that can be passed to workers as an argument."""
    return ctx.Lock()


def make_queue() -> Any:
    """A Queue that can be passed to workers, e.g. to stream progress."""
    return ctx.Queue()


def current_settings_overrides(
    always: Sequence[str] = _ALWAYS_SENT,
) -> dict[str, Any]:
    """Snapshot every setting whose live value differs from what a fresh
    process would get from the settings module and Django's defaults.

    That covers ``override_settings`` in effect (the backend's ``CACHES``,
    ``SYNCACHE``), pytest-django's changes (the test database NAME in
    ``DATABASES``, ``EMAIL_BACKEND``...) and anything a test changed with the
    ``settings`` fixture. The names in ``always`` are included regardless.
    """
    from django.conf import global_settings, settings

    module_name = getattr(settings, "SETTINGS_MODULE", None) or os.environ.get(
        "DJANGO_SETTINGS_MODULE"
    )
    module = importlib.import_module(module_name) if module_name else None
    snapshot: dict[str, Any] = {}
    for name in dir(settings):
        if not name.isupper() or name in _NOT_SETTINGS:
            continue
        with warnings.catch_warnings():
            # Reading a deprecated setting (DEFAULT_FILE_STORAGE on Django
            # 4.2...) warns; copying it is not using it.
            warnings.simplefilter("ignore")
            value = getattr(settings, name)
        if name not in always:
            if module is not None and hasattr(module, name):
                baseline = getattr(module, name)
            else:
                baseline = getattr(global_settings, name, _MISSING)
            if value == baseline:
                continue
        snapshot[name] = copy.deepcopy(value)
    return snapshot


# -- the worker side ---------------------------------------------------------


def _setup_django(bootstrap: Mapping[str, Any]) -> None:
    for path in reversed(bootstrap["sys_path"]):
        if path not in sys.path:
            sys.path.insert(0, path)
    os.environ.update(bootstrap["environ"])
    settings_module = bootstrap["settings_module"]
    os.environ["DJANGO_SETTINGS_MODULE"] = settings_module

    import django
    from django.conf import settings

    if settings.configured:
        raise RuntimeError(
            "Django settings were configured before the worker set them up: "
            "does the __main__ module (re-imported by spawn as __mp_main__) "
            "configure Django at import time? Guard it with "
            "`if __name__ == '__main__':`."
        )
    module = importlib.import_module(settings_module)
    values = {name: getattr(module, name) for name in dir(module) if name.isupper()}
    values.update(bootstrap["overrides"])
    settings.configure(**values)
    django.setup()


def _close_django() -> None:
    """Close connections explicitly so PostgreSQL sees the session end now,
    not when the kernel reaps the socket."""
    try:
        from django.core.cache import close_caches
        from django.db import connections

        connections.close_all()
        close_caches()
    except Exception:  # the worker's own outcome matters more
        pass


def _child_main(
    index: int,
    conn: Connection,
    bootstrap: Mapping[str, Any],
    payload: bytes,
    direct_args: dict[int, Any],
    direct_kwargs: dict[str, Any],
) -> None:
    """Entry point of a spawned worker (module level so spawn can import it)."""
    dump = open(bootstrap["dump_path"], "w")  # noqa: SIM115 - open until exit
    faulthandler.register(signal.SIGUSR1, file=dump, all_threads=True)
    message: tuple[int, str, Any]
    # The cyclic GC only slows the import burst down (~10% of start-up).
    gc.disable()
    try:
        _setup_django(bootstrap)
        func, plain_args, plain_kwargs = pickle.loads(payload)
        gc.enable()
        merged = {**plain_args, **direct_args}
        args = [merged[position] for position in range(len(merged))]
        result = func(index, *args, **plain_kwargs, **direct_kwargs)
        message = (index, "ok", result)
    except BaseException:  # everything goes back to the parent
        message = (index, "error", traceback.format_exc())
    _close_django()
    try:
        conn.send(message)
    except Exception:  # e.g. an unpicklable result
        conn.send(
            (index, "error", "the result could not be sent:\n" + traceback.format_exc())
        )
    conn.close()


# -- the parent side ---------------------------------------------------------


def _check_callable(func: Callable[..., Any]) -> None:
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", "")
    if module in (None, "__main__") or "<" in qualname:
        raise TypeError(
            f"{func!r} must be a module-level function of an importable module "
            "(spawned workers import it by name)"
        )
    try:
        pickle.dumps(func)
    except Exception as exc:
        raise TypeError(f"{func!r} cannot be pickled by reference: {exc}") from exc


def _needs_spawn_pickling(value: Any) -> bool:
    """Whether ``value`` can only travel as a Process argument.

    Barriers, Events, Locks and Queues refuse plain pickling ("should only be
    shared between processes through inheritance"); they are passed directly.
    Everything else is pickled into the payload and unpickled after
    ``django.setup()`` in the worker.
    """
    try:
        pickle.dumps(value)
    except Exception:  # any failure: let spawn try
        return True
    return False


def _find_barriers(values: Sequence[Any]) -> list[synchronize.Barrier]:
    found: list[synchronize.Barrier] = []
    for value in values:
        candidates = value if isinstance(value, list | tuple) else (value,)
        found.extend(c for c in candidates if isinstance(c, synchronize.Barrier))
    return found


_ACTIVE_GROUPS: set[WorkerGroup] = set()


def has_active_groups() -> bool:
    """Whether some group was started and not yet joined or terminated."""
    return bool(_ACTIVE_GROUPS)


def terminate_active_groups() -> str:
    """Kill every group not yet joined; return the failures they had reported.

    Used by an autouse fixture so a test that failed (or forgot ``join()``)
    between :func:`start_processes` and ``join()`` leaves no process behind,
    and the workers' own errors still reach the report.
    """
    reports = []
    for group in list(_ACTIVE_GROUPS):
        failures = group.terminate()
        if failures:
            reports.append(group._describe(failures))
    return "\n".join(reports)


class WorkerGroup:
    """Handle on workers started by :func:`start_processes`.

    A collector thread receives the workers' reports as they arrive. As soon
    as one fails it aborts the barriers passed to the workers, so everyone
    waiting on them (the parent included) gets ``BrokenBarrierError`` at once
    rather than at the barrier timeout. At the deadline it asks the
    stragglers for a stack dump and kills them.

    Call :meth:`join` for the results; use the group as a context manager so
    that if the test body raises (say ``BrokenBarrierError``), the workers'
    tracebacks are raised with it as :class:`WorkerError`.
    """

    def __init__(
        self,
        processes: list[BaseProcess],
        connections: list[Connection],
        dump_dir: str,
        timeout: float,
        barriers: list[synchronize.Barrier],
    ) -> None:
        self.processes = processes
        self._connections = connections
        self._dump_dir = dump_dir
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self._barriers = barriers
        self._results: dict[int, Any] = {}
        self._failures: dict[int, str] = {}
        self._stop_reason = f"timed out after {timeout:g}s"
        self._dump_stragglers = True
        self._lock = threading.Lock()
        self._wake_reader, self._wake_writer = multiprocessing.Pipe(duplex=False)
        self._closed = False
        self._collector = threading.Thread(
            target=self._collect_all, name="syncache-worker-collector", daemon=True
        )
        self._collector.start()
        _ACTIVE_GROUPS.add(self)

    def __len__(self) -> int:
        return len(self.processes)

    @property
    def pids(self) -> list[int | None]:
        """Process ids, by worker index."""
        return [process.pid for process in self.processes]

    # -- public API ---------------------------------------------------------

    def join(self, timeout: float | None = None) -> list[Any]:
        """Wait for every worker and return their results by index.

        ``timeout`` (seconds from now) may shorten the group's deadline.
        Raises :class:`WorkerError` if any worker raised, died or was still
        running at the deadline (it is then killed).
        """
        if self._closed:
            raise RuntimeError("this group was already joined or terminated")
        if timeout is not None:
            self._shorten(
                time.monotonic() + timeout,
                f"still running at join(timeout={timeout:g})",
                dump=True,
            )
        failures = self._finish()
        if failures:
            raise WorkerError(self._describe(failures), failures, self._results)
        return [self._results[index] for index in range(len(self.processes))]

    def terminate(self) -> dict[int, str]:
        """Kill any worker still running; return the failures reported so far
        (workers killed here are not counted as failures)."""
        if self._closed:
            return {}
        self._shorten(time.monotonic(), "", dump=False)
        failures = self._finish()
        return {index: text for index, text in failures.items() if text}

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._closed:
            return
        if not isinstance(exc, Exception):
            self.terminate()
            return
        # The test body failed while workers ran: show their side too.
        self._shorten(
            time.monotonic(),
            f"still running when the test raised {type(exc).__name__}",
            dump=True,
        )
        failures = self._finish()
        if failures:
            raise WorkerError(
                f"the test raised {exc!r} while its workers ran; "
                + self._describe(failures),
                failures,
                self._results,
            ) from exc

    # -- the collector thread -------------------------------------------------

    def _shorten(self, deadline: float, reason: str, *, dump: bool) -> None:
        with self._lock:
            if deadline < self.deadline:
                self.deadline = deadline
                self._stop_reason = reason
                self._dump_stragglers = dump
        with contextlib.suppress(OSError):
            self._wake_writer.send_bytes(b"!")

    def _finish(self) -> dict[int, str]:
        self._collector.join()
        self._closed = True
        _ACTIVE_GROUPS.discard(self)
        for conn in [*self._connections, self._wake_reader, self._wake_writer]:
            conn.close()
        shutil.rmtree(self._dump_dir, ignore_errors=True)
        return dict(self._failures)

    def _collect_all(self) -> None:
        pending = set(range(len(self.processes)))
        try:
            while pending:
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    break
                owners: dict[Any, int] = {}
                for index in pending:
                    owners[self._connections[index]] = index
                    owners[self.processes[index].sentinel] = index
                for ready in wait([*owners, self._wake_reader], timeout=remaining):
                    if ready is self._wake_reader:
                        while self._wake_reader.poll():
                            self._wake_reader.recv_bytes()
                        continue
                    index = owners[ready]
                    if index in pending:
                        pending.discard(index)
                        self._collect(index)
            self._stop_stragglers(sorted(pending))
            self._reap()
        except BaseException:
            for index, process in enumerate(self.processes):
                self._stop(process)
                self._failures.setdefault(
                    index, "the harness failed:\n" + traceback.format_exc()
                )

    def _collect(self, index: int) -> None:
        conn = self._connections[index]
        process = self.processes[index]
        if conn.poll():
            try:
                _, status, value = conn.recv()
            except EOFError:
                process.join(1)
                self._failures[index] = (
                    f"exited with code {process.exitcode} without reporting a result"
                )
            except Exception:  # e.g. the result's class is not importable here
                self._failures[index] = (
                    "its result could not be unpickled in the parent:\n"
                    + traceback.format_exc()
                )
            else:
                if status == "ok":
                    self._results[index] = value
                else:
                    self._failures[index] = value
        else:
            process.join(1)
            self._failures[index] = (
                f"exited with code {process.exitcode} without reporting a result"
            )
        if index in self._failures:
            # Fail fast: whoever waits for the failed worker at a barrier
            # gets BrokenBarrierError now instead of at the barrier timeout.
            for barrier in self._barriers:
                barrier.abort()

    def _stop_stragglers(self, indices: list[int]) -> None:
        if not indices:
            return
        # Abort first: a multiprocessing barrier aborted after its waiters
        # were killed waits forever for them to acknowledge.
        for barrier in self._barriers:
            barrier.abort()
        with self._lock:
            reason, dump_first = self._stop_reason, self._dump_stragglers
        dumps = {index: Path(self._dump_dir) / f"{index}.txt" for index in indices}
        if dump_first:
            asked = []
            for index in indices:
                pid = self.processes[index].pid
                if self.processes[index].is_alive() and pid is not None:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGUSR1)
                        asked.append(index)
            # faulthandler writes from the signal handler: give it a moment.
            stop = time.monotonic() + 1.0
            while time.monotonic() < stop and not all(
                _file_size(dumps[index]) for index in asked
            ):
                time.sleep(0.02)
            time.sleep(0.05)
        for index in indices:
            self._stop(self.processes[index])
            if not reason:
                continue  # terminate(): not a failure of the worker
            try:
                dump = dumps[index].read_text(errors="replace").strip()
            except OSError:
                dump = ""
            if dump_first:
                stack = dump or "(no stack dump: it never got past start-up)"
                self._failures[index] = (
                    f"{reason} and was killed; its threads at that moment:\n{stack}"
                )
            else:
                self._failures[index] = f"{reason} and was killed"

    def _reap(self) -> None:
        stop = time.monotonic() + EXIT_GRACE
        for index, process in enumerate(self.processes):
            process.join(max(0.0, stop - time.monotonic()))
            if process.is_alive():
                self._stop(process)
                self._failures.setdefault(
                    index,
                    "reported its result but did not exit (a non-daemon "
                    "thread?) and was killed",
                )

    @staticmethod
    def _stop(process: BaseProcess) -> None:
        if process.is_alive():
            process.terminate()
            process.join(2)
        if process.is_alive():
            process.kill()
            process.join()

    def _describe(self, failures: dict[int, str]) -> str:
        lines = [f"{len(failures)} of {len(self.processes)} worker(s) failed:"]
        for index in sorted(failures):
            pid = self.processes[index].pid
            lines.append(f"--- worker {index} (pid {pid}) ---")
            lines.append(failures[index].rstrip())
        return "\n".join(lines)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def start_processes(
    func: Callable[..., Any],
    n: int,
    *args: Any,
    settings_overrides: Mapping[str, Any] | None,
    timeout: float = DEFAULT_TIMEOUT,
    **kwargs: Any,
) -> WorkerGroup:
    """Start ``n`` workers running ``func(index, *args, **kwargs)``; return at
    once with a :class:`WorkerGroup` to ``join()``.

    ``settings_overrides`` is applied over the settings module in each
    worker; pass ``backend.settings_overrides``. ``None`` snapshots the
    parent's current settings (:func:`current_settings_overrides`).
    ``timeout`` bounds the whole group, spawn included.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    _check_callable(func)
    overrides = (
        current_settings_overrides()
        if settings_overrides is None
        else dict(settings_overrides)
    )
    plain_args: dict[int, Any] = {}
    direct_args: dict[int, Any] = {}
    for position, value in enumerate(args):
        target = direct_args if _needs_spawn_pickling(value) else plain_args
        target[position] = value
    plain_kwargs = {k: v for k, v in kwargs.items() if not _needs_spawn_pickling(v)}
    direct_kwargs = {k: v for k, v in kwargs.items() if k not in plain_kwargs}
    payload = pickle.dumps((func, plain_args, plain_kwargs))

    dump_dir = tempfile.mkdtemp(prefix="syncache-workers-")
    from django.conf import settings

    settings_module = getattr(settings, "SETTINGS_MODULE", None) or os.environ.get(
        "DJANGO_SETTINGS_MODULE", "tests.settings"
    )
    environ = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIX)}
    processes: list[BaseProcess] = []
    connections: list[Connection] = []
    try:
        for index in range(n):
            reader, writer = ctx.Pipe(duplex=False)
            bootstrap = {
                "settings_module": settings_module,
                "overrides": overrides,
                "sys_path": [PROJECT_ROOT],
                "environ": environ,
                "dump_path": str(Path(dump_dir) / f"{index}.txt"),
            }
            process: BaseProcess = ctx.Process(
                target=_child_main,
                args=(index, writer, bootstrap, payload, direct_args, direct_kwargs),
                name=f"syncache-worker-{index}",
                daemon=True,
            )
            process.start()
            # The child holds its own copy now; closing ours lets the reader
            # see EOF if the child dies without reporting.
            writer.close()
            processes.append(process)
            connections.append(reader)
    except BaseException:
        for started in processes:
            WorkerGroup._stop(started)
        shutil.rmtree(dump_dir, ignore_errors=True)
        raise
    barriers = _find_barriers([*args, *kwargs.values()])
    return WorkerGroup(processes, connections, dump_dir, timeout, barriers)


def run_in_processes(
    func: Callable[..., Any],
    n: int,
    *args: Any,
    settings_overrides: Mapping[str, Any] | None,
    timeout: float = DEFAULT_TIMEOUT,
    **kwargs: Any,
) -> list[Any]:
    """Run ``func(index, *args, **kwargs)`` in ``n`` spawned workers at once
    and return the results ordered by index (see :func:`start_processes`)."""
    group = start_processes(
        func, n, *args, settings_overrides=settings_overrides, timeout=timeout, **kwargs
    )
    return group.join()


#: ``run_in_processes.start(...)`` is :func:`start_processes`, for callers who
#: think of the two as one API.
run_in_processes.start = start_processes  # type: ignore[attr-defined]


__all__ = [
    "DEFAULT_TIMEOUT",
    "PROJECT_ROOT",
    "WorkerError",
    "WorkerGroup",
    "ctx",
    "current_settings_overrides",
    "has_active_groups",
    "make_barrier",
    "make_event",
    "make_lock",
    "make_queue",
    "run_in_processes",
    "start_processes",
    "terminate_active_groups",
]
