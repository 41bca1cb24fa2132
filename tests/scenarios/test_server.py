"""Real multi-worker servers: a change made through one worker is seen by
every other worker at its next request (DESIGN.md promises 1 and 4).

gunicorn runs ``tests.wsgi`` with 4 sync workers (no ``--preload``: every
worker imports Django and the models itself), on the SQLite database cache
and on Redis; uvicorn runs ``tests.asgi`` with 2 workers. The views are in
``tests/views.py``; each answer names the pid that served it.

The scenario, for each way of changing data:

1. warm every worker: request until every worker has served the page and
   holds the old value in its ``LocalSyncCache``;
2. change the data through one request;
3. request until every worker has answered again: every answer given after
   the change returned must be the new value (a single stale one fails).

Requests go out from several client threads at once, so that every worker
gets some (a sync worker takes one connection at a time; the kernel hands
the others to idle workers). Waiting is by requests with a deadline, never
by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from django.test import AsyncClient

import syncache
import syncache.middleware
from syncache import GenerationSynchronizer, LocalSyncCache
from tests.harness.backends import Backend
from tests.harness.servers import LOOPBACK, _die_with_parent, free_port
from tests.harness.workers import PROJECT_ROOT, run_in_processes
from tests.models import PageTree, SiteSetting, site_settings

#: Seconds a server gets to answer its first request (workers import Django).
START_TIMEOUT = 60.0
#: Seconds a phase (warming, checking every worker) may take.
PHASE_TIMEOUT = 20.0
#: Seconds one HTTP request may take.
REQUEST_TIMEOUT = 30.0
#: Client threads sending requests at once.
CLIENT_THREADS = 8

Answer = dict[str, Any]


class ServerFailed(AssertionError):
    """The server died, or a request to it failed; carries its log."""


class Server:
    """A WSGI/ASGI server in a subprocess, with its log in a file."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        base_url: str,
        *,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.argv = argv
        self.base_url = base_url
        self._dir = tempfile.mkdtemp(prefix="syncache-server-")
        self.log_path = Path(self._dir) / "server.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            argv,
            env=env,
            cwd=self._dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
            preexec_fn=_die_with_parent(),
            start_new_session=True,  # stop() signals the whole process group
        )

    def log_tail(self, size: int = 4000) -> str:
        try:
            text = self.log_path.read_bytes()[-size:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return text.strip() or "(empty log)"

    def request(
        self,
        path: str,
        data: dict[str, str] | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> Answer:
        """GET ``path`` (POST ``data`` when given) and return the JSON answer."""
        body = None if data is None else urllib.parse.urlencode(data).encode()
        try:
            with urllib.request.urlopen(
                self.base_url + path, data=body, timeout=timeout
            ) as response:
                status = response.status
                payload = response.read()
        except (OSError, urllib.error.URLError) as exc:
            raise ServerFailed(self._failure(f"{path}: {exc!r}")) from exc
        if status != 200:
            raise ServerFailed(self._failure(f"{path}: HTTP {status}"))
        answer: Answer = json.loads(payload)
        return answer

    def _failure(self, what: str) -> str:
        state = "running" if self.process.poll() is None else "exited"
        return (
            f"request failed: {what}; the server is {state} "
            f"(code {self.process.returncode}); its log:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL it if it lingers."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        # Workers that outlived the master (they should not) go too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()
        with contextlib.suppress(OSError):
            self.log_path.unlink()
            os.rmdir(self._dir)


def _listening_socket() -> socket.socket:
    """A loopback socket bound and listening on a port the kernel chose; the
    server inherits it, so no other process can take the port meanwhile."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _gunicorn_options() -> list[str]:
    from gunicorn.config import KNOWN_SETTINGS

    names = {setting.name for setting in KNOWN_SETTINGS}
    # Newer gunicorn opens a control socket at a fixed default path.
    return ["--no-control-socket"] if "control_socket_disable" in names else []


@contextlib.contextmanager
def gunicorn(backend: Backend, workers: int) -> Iterator[Server]:
    """gunicorn serving ``tests.wsgi`` with ``workers`` sync workers."""
    sock = _listening_socket()
    port = sock.getsockname()[1]
    argv = [
        sys.executable, "-m", "gunicorn",
        "--bind", f"fd://{sock.fileno()}",
        "--workers", str(workers),
        "--worker-class", "sync",
        "--timeout", "120",
        "--graceful-timeout", "5",
        "--log-level", "warning",
        "--chdir", PROJECT_ROOT,
        *_gunicorn_options(),
        "tests.wsgi:application",
    ]  # fmt: skip
    try:
        server = Server(
            argv,
            backend.env(),
            f"http://{LOOPBACK}:{port}",
            pass_fds=(sock.fileno(),),
        )
    finally:
        # The server holds its own copy; with ours closed, a dead server
        # refuses connections instead of leaving them in the backlog.
        sock.close()
    try:
        wait_until_serving(server)
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def uvicorn(backend: Backend, workers: int) -> Iterator[Server]:
    """uvicorn serving ``tests.asgi`` with ``workers`` worker processes.

    uvicorn's ``--fd`` takes the descriptor for a Unix socket, so uvicorn
    binds a port that was free a moment ago; on the rare clash it is retried.
    """
    for attempt in range(3):
        port = free_port()
        argv = [
            sys.executable, "-m", "uvicorn",
            "--host", LOOPBACK,
            "--port", str(port),
            "--workers", str(workers),
            "--log-level", "warning",
            "--no-access-log",
            "--lifespan", "off",
            "--app-dir", PROJECT_ROOT,
            "tests.asgi:application",
        ]  # fmt: skip
        server = Server(argv, backend.env(), f"http://{LOOPBACK}:{port}")
        try:
            wait_until_serving(server)
        except ServerFailed:
            clash = "address already in use" in server.log_tail().lower()
            server.stop()
            if clash and attempt < 2:
                continue
            raise
        break
    try:
        yield server
    finally:
        server.stop()


def wait_until_serving(server: Server) -> None:
    """Request ``/pid/`` until the server answers (connections are refused
    until it binds, or queue until a worker is up), with a deadline."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if server.process.poll() is not None:
            raise ServerFailed(
                f"the server exited with code {server.process.returncode}:\n"
                f"{server.log_tail()}"
            )
        try:
            server.request("/pid/", timeout=max(0.1, deadline - time.monotonic()))
        except ServerFailed:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)  # the port is not bound yet: poll again
        else:
            return


def _children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes, from ``/proc``."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # it exited meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == pid and b"resource_tracker" not in cmdline:
            children.append(int(entry.name))
    return sorted(children)


def worker_pids(server: Server, expected: int) -> list[int]:
    """The pids of the server's ``expected`` worker processes (children of
    its master), once they are all started; fail after START_TIMEOUT."""
    deadline = time.monotonic() + START_TIMEOUT
    while len(pids := _children(server.process.pid)) != expected:
        if time.monotonic() >= deadline or server.process.poll() is not None:
            raise AssertionError(
                f"expected {expected} workers, found {pids}:\n{server.log_tail()}"
            )
        server.request("/pid/")  # poll by requests while the master forks
    return pids


def _summary(answers: list[Answer]) -> str:
    """Per pid: how many answers, how many served from the worker's cache."""
    counts: dict[int, list[int]] = {}
    for answer in answers:
        count = counts.setdefault(answer["pid"], [0, 0])
        count[0] += 1
        count[1] += bool(answer.get("was_cached"))
    return "answers (served from cache) per pid: " + ", ".join(
        f"{pid}: {n} ({cached})" for pid, (n, cached) in sorted(counts.items())
    )


def request_until(
    server: Server,
    path: str,
    done: Callable[[list[Answer]], bool],
    what: str,
) -> list[Answer]:
    """Send GET ``path`` from several threads at once, batch after batch,
    until ``done(answers so far)``; fail after PHASE_TIMEOUT seconds."""
    answers: list[Answer] = []
    deadline = time.monotonic() + PHASE_TIMEOUT
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        while not done(answers):
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{what}: not done after {PHASE_TIMEOUT:g}s and "
                    f"{len(answers)} requests; {_summary(answers)}; "
                    f"server log:\n{server.log_tail()}"
                )
            batch = [pool.submit(server.request, path) for _ in range(CLIENT_THREADS)]
            answers.extend(future.result() for future in batch)
    return answers


def check_every_worker_sees_the_change(
    server: Server,
    pids: list[int],
    path: str,
    field: str,
    old: str,
    new: str,
    change: Callable[[], Answer],
) -> None:
    """Warm every worker with ``old``, ``change()``, and check that every
    answer after it is ``new`` until every worker has answered."""

    def all_warm(answers: list[Answer]) -> bool:
        # Served from the worker's cache: it survived that request's check.
        warm = {a["pid"] for a in answers if a[field] == old and a["was_cached"]}
        return warm >= set(pids)

    warming = request_until(server, path, all_warm, f"warming {path}")
    assert {a["pid"] for a in warming} == set(pids), "only the server's workers"
    assert {a[field] for a in warming} == {old}

    changed_by = change()["pid"]
    assert changed_by in pids

    def all_answered(answers: list[Answer]) -> bool:
        return {a["pid"] for a in answers} >= set(pids)

    after = request_until(server, path, all_answered, f"reading {path} again")
    stale = [(a["pid"], a[field], a["was_cached"]) for a in after if a[field] != new]
    assert stale == [], (
        f"stale answers (pid, {field}, was_cached) after the change made "
        f"through {changed_by}; {_summary(after)}"
    )
    # The other workers held the old value in their caches, so each of them
    # recomputed at least once after the change. (Not necessarily in its
    # first answer as listed: the requests of a batch run concurrently, and
    # an ASGI worker serves several at once.)
    for pid in set(pids) - {changed_by}:
        assert any(not a["was_cached"] for a in after if a["pid"] == pid), (
            f"worker {pid} never recomputed"
        )


@pytest.fixture
def data(transactional_db: Any) -> dict[str, Any]:
    """Committed rows the server's workers can read: a page under a root
    page, and two settings."""
    root = PageTree.objects.create(slug="root")
    page = PageTree.objects.create(parent=root, slug="old")
    SiteSetting.objects.create(name="title", value="old title")
    SiteSetting.objects.create(name="motto", value="old motto")
    return {"root": root, "page": page}


def _run_scenarios(server: Server, pids: list[int], data: dict[str, Any]) -> None:
    page = data["page"].pk
    check_every_worker_sees_the_change(
        server,
        pids,
        f"/page/{page}/url/",
        "url",
        "/root/old/",
        "/root/new/",
        lambda: server.request(f"/page/{page}/slug/", {"slug": "new"}),
    )
    # A change of the parent changes the child's cached URL too.
    root = data["root"].pk
    check_every_worker_sees_the_change(
        server,
        pids,
        f"/page/{page}/url/",
        "url",
        "/root/new/",
        "/top/new/",
        lambda: server.request(f"/page/{root}/slug/", {"slug": "top"}),
    )
    check_every_worker_sees_the_change(
        server,
        pids,
        "/setting/title/",
        "value",
        "old title",
        "new title",
        lambda: server.request("/setting/title/save/", {"value": "new title"}),
    )
    check_every_worker_sees_the_change(
        server,
        pids,
        "/setting/motto/",
        "value",
        "old motto",
        "new motto",
        lambda: server.request("/setting/motto/update/", {"value": "new motto"}),
    )


@pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)
def test_gunicorn_workers_see_every_change(
    backend: Backend, data: dict[str, Any]
) -> None:
    with gunicorn(backend, workers=4) as server:
        _run_scenarios(server, worker_pids(server, 4), data)


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_uvicorn_workers_see_every_change(
    backend: Backend, data: dict[str, Any]
) -> None:
    with uvicorn(backend, workers=2) as server:
        _run_scenarios(server, worker_pids(server, 2), data)


# -- a worker's first requests ------------------------------------------------------


def first_two_requests(index: int) -> dict[str, Any]:
    """A fresh process: its model caches' generation keys were never
    written. Its first request fills a cache; its second must find it."""
    syncache.check_all()  # first request
    site_settings["title"] = "computed in the first request"
    syncache.check_all()  # second request: nothing changed anywhere
    return dict(site_settings)


@pytest.mark.parametrize("epoch", ["fresh cache", "epoch exists"])
@pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)
def test_a_new_worker_keeps_its_cache_from_its_first_request(
    backend: Backend, epoch: str
) -> None:
    """Why a worker of a freshly started site can stay unable to cache: the
    check that finds a generation key missing re-creates it, and the next
    checks must then find it (not the "missing" of the first read)."""
    if epoch == "epoch exists":
        # Another process already changed something on this site.
        GenerationSynchronizer("something else").mark_updated()
    [kept] = run_in_processes(
        first_two_requests, 1, settings_overrides=backend.settings_overrides
    )
    assert kept == {"title": "computed in the first request"}


# -- the async middleware path, in-process ---------------------------------------


def _another_process_clears(cache: LocalSyncCache) -> None:
    """What ``cache.clear()`` in another process writes to the shared cache."""
    GenerationSynchronizer(cache.cache_key, normalize_cache_key=False).mark_updated()


@pytest.fixture
def _model_caches_registered() -> None:
    """The model caches must be in the registry that ``check_all`` reads."""
    registered = list(LocalSyncCache.CACHES)
    for cache in (PageTree._url_cache, site_settings):
        assert cache in registered, (
            f"{cache!r} is not in LocalSyncCache.CACHES: did a test replace "
            "or clear the registry without restoring it?"
        )


@pytest.mark.usefixtures("_model_caches_registered")
@pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)
def test_async_requests_check_before_the_view(
    backend: Backend, transactional_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ASGI the middleware runs its async path, checks before the view,
    and the view sees the caches that check cleared."""
    calls: list[int] = []
    real_acall = syncache.middleware.LocalSyncCacheMiddleware.__acall__

    async def spy(self: Any, request: Any) -> Any:
        calls.append(threading.get_ident())
        return await real_acall(self, request)

    monkeypatch.setattr(syncache.middleware.LocalSyncCacheMiddleware, "__acall__", spy)
    SiteSetting.objects.create(name="title", value="old")
    client = AsyncClient()

    async def get() -> Answer:
        response = await client.get("/setting/title/async/")
        assert response.status_code == 200
        answer: Answer = response.json()
        return answer

    first = asyncio.run(get())
    second = asyncio.run(get())
    assert (first["value"], first["was_cached"]) == ("old", False)
    assert (second["value"], second["was_cached"]) == ("old", True)
    # Another process changes the row and clears its cache.
    SiteSetting.objects.filter(name="title").update(value="new")
    _another_process_clears(site_settings)
    third = asyncio.run(get())
    assert (third["value"], third["was_cached"]) == ("new", False)
    fourth = asyncio.run(get())
    assert (fourth["value"], fourth["was_cached"]) == ("new", True)
    assert len(calls) == 4, "every request went through the async middleware"
