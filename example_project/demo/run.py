"""The demo: the example site under gunicorn, driven over HTTP.

One run starts gunicorn with several worker processes, each importing the
site on its own, as in production. gunicorn hands each new connection to
whichever worker accepts it first, so the demo opens connections until it
holds one kept-alive connection to every worker (gthread workers keep a
connection open between requests); each answer names the process that
served it, and an answer from another process than the connection's stops
the demo.

Each round then:

1. reads through every worker until each holds the demo page's URL in
   memory (the second read is served from its ``LocalSyncCache``);
2. renames the page's parent and the site through one worker, a different
   one each round;
3. reads through every worker at once, and again until the answer is the
   new one or :data:`STALE_WINDOW` seconds have passed.

A first answer after the update that is not the new one is a stale read.
The time from the update's answer to a worker's first new answer is its
propagation time. Each answer carries the number of requests it sent to
the shared cache (:mod:`demo.roundtrips`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demo.roundtrips import HEADER
from demo.views import DEMO_PAGE

LOOPBACK = "127.0.0.1"
#: Seconds gunicorn gets to answer its first request (workers import Django).
START_TIMEOUT = 60.0
#: Seconds the demo spends opening connections until it reaches every worker.
CONNECT_TIMEOUT = 30.0
#: Seconds one HTTP request may take.
REQUEST_TIMEOUT = 30.0
#: Seconds a worker that answered stale is read again, before it is
#: reported as still stale.
STALE_WINDOW = 1.0
#: Seconds between two reads of a worker that answered stale.
STALE_POLL = 0.05
#: Reads per worker before an update, until its URL is served from memory.
MAX_WARM_READS = 5


class DemoError(Exception):
    """The demo could not run; the message says why."""


@dataclass(frozen=True)
class Site:
    """Where the site runs from: its directory, data and coordination cache."""

    base_dir: Path
    data_dir: Path
    cache_url: str

    def env(self, *, syncache: bool) -> dict[str, str]:
        """The environment of the site's processes."""
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="demo.settings",
            SYNCACHE_DEMO_DATA_DIR=str(self.data_dir),
            SYNCACHE_DEMO_CACHE=self.cache_url,
            SYNCACHE_DEMO_OFF="0" if syncache else "1",
            PYTHONUNBUFFERED="1",
        )
        return env

    def manage(self, *args: str) -> None:
        """Run ``manage.py`` with ``args`` in a process of its own."""
        command = [sys.executable, str(self.base_dir / "manage.py"), *args]
        done = subprocess.run(
            command,
            cwd=self.base_dir,
            env=self.env(syncache=True),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise DemoError(
                f"manage.py {' '.join(args)} failed (exit code {done.returncode}):\n"
                f"{(done.stdout + done.stderr).strip()}"
            )

    def create_database(self) -> None:
        """Migrate the database and create the database cache's table."""
        self.manage("migrate", "--no-input", "--verbosity", "0")
        if not self.cache_url:
            self.manage("createcachetable", "--verbosity", "0")


# -- the server ------------------------------------------------------------------


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that stops gunicorn if the demo is killed (Linux)."""
    libc_name = ctypes.util.find_library("c")
    if not sys.platform.startswith("linux") or libc_name is None:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)
    pr_set_pdeathsig = 1
    return lambda: libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _gunicorn_options() -> list[str]:
    from gunicorn.config import KNOWN_SETTINGS

    names = {setting.name for setting in KNOWN_SETTINGS}
    # Newer gunicorn opens a control socket at a fixed path unless told not to.
    return ["--no-control-socket"] if "control_socket_disable" in names else []


class Server:
    """gunicorn serving the site, with ``workers`` gthread workers."""

    def __init__(self, site: Site, workers: int, *, syncache: bool) -> None:
        self.workers = workers
        # Bound here and inherited by gunicorn: the port is known before it
        # starts, and connections wait in the backlog until a worker is up.
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((LOOPBACK, 0))
        listener.listen(128)
        listener.set_inheritable(True)
        self.port: int = listener.getsockname()[1]
        self.log_path = site.data_dir / f"gunicorn-{os.getpid()}-{self.port}.log"
        command = [
            sys.executable, "-m", "gunicorn",
            "--bind", f"fd://{listener.fileno()}",
            "--workers", str(workers),
            "--worker-class", "gthread",
            "--threads", "2",
            "--keep-alive", "300",
            "--timeout", "60",
            "--graceful-timeout", "5",
            "--log-level", "warning",
            "--chdir", str(site.base_dir),
            *_gunicorn_options(),
            "example.wsgi:application",
        ]  # fmt: skip
        try:
            with open(self.log_path, "wb") as log:
                self.process = subprocess.Popen(
                    command,
                    cwd=site.base_dir,
                    env=site.env(syncache=syncache),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(listener.fileno(),),
                    preexec_fn=_die_with_parent(),
                    start_new_session=True,  # stop() signals the whole group
                )
        finally:
            # gunicorn holds its own copy; with ours closed, a dead server
            # refuses connections instead of leaving them in the backlog.
            listener.close()

    def log_tail(self, size: int = 3000) -> str:
        try:
            text = self.log_path.read_bytes()[-size:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return text.strip() or "(empty log)"

    def failure(self, what: str) -> DemoError:
        state = "running" if self.process.poll() is None else "exited"
        return DemoError(f"{what}; gunicorn is {state}. Its log:\n{self.log_tail()}")

    def connect(self) -> WorkerConnection:
        """A new kept-alive connection, to whichever worker accepts it."""
        return WorkerConnection(self)

    def wait_until_serving(self) -> None:
        connection = WorkerConnection(self, timeout=START_TIMEOUT)
        connection.close()

    def stop(self) -> None:
        """SIGTERM gunicorn's process group, then SIGKILL what lingers."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


@dataclass(frozen=True)
class Answer:
    """One JSON answer, its round trips to the shared cache, when it came."""

    data: dict[str, Any]
    round_trips: int
    received_at: float


class WorkerConnection:
    """A kept-alive HTTP connection, bound to the worker that accepted it."""

    def __init__(self, server: Server, timeout: float = REQUEST_TIMEOUT) -> None:
        self.server = server
        self._http = http.client.HTTPConnection(LOOPBACK, server.port, timeout=timeout)
        #: The worker's pid; 0 until its first answer.
        self.pid = 0
        self.pid = self.request("GET", "/demo/pid/").data["pid"]

    def request(
        self, method: str, path: str, data: dict[str, str] | None = None
    ) -> Answer:
        body = None if data is None else urllib.parse.urlencode(data)
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if data else {}
        try:
            self._http.request(method, path, body=body, headers=headers)
            response = self._http.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as error:
            raise self.server.failure(f"{method} {path} failed: {error!r}") from error
        received_at = time.monotonic()
        if response.status != 200:
            raise self.server.failure(
                f"{method} {path} answered HTTP {response.status}: "
                f"{payload[:500].decode('utf-8', 'replace')}"
            )
        answer = Answer(
            json.loads(payload), int(response.getheader(HEADER, "-1")), received_at
        )
        if self.pid and answer.data["pid"] != self.pid:
            raise DemoError(
                f"the connection to worker {self.pid} was answered by worker "
                f"{answer.data['pid']}: gunicorn closed it and it was reopened"
            )
        return answer

    def read(self) -> Answer:
        return self.request("GET", "/demo/read/")

    def close(self) -> None:
        self._http.close()


def connect_to_every_worker(server: Server) -> list[WorkerConnection]:
    """Open connections until one reaches each worker; close the others."""
    reached: dict[int, WorkerConnection] = {}
    spare: list[WorkerConnection] = []
    deadline = time.monotonic() + CONNECT_TIMEOUT
    try:
        while len(reached) < server.workers:
            if time.monotonic() >= deadline:
                raise server.failure(
                    f"reached {len(reached)} of {server.workers} workers after "
                    f"{len(reached) + len(spare)} connections"
                )
            connection = server.connect()
            if connection.pid in reached:
                spare.append(connection)  # kept open until every worker is found
            else:
                reached[connection.pid] = connection
    except BaseException:
        for connection in reached.values():
            connection.close()
        raise
    finally:
        for connection in spare:
            connection.close()
    return [reached[pid] for pid in sorted(reached)]


# -- rounds ------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """What every worker must serve after an update."""

    section: str
    site_name: str

    @property
    def url(self) -> str:
        return f"/{self.section}/{DEMO_PAGE}/"

    def stale_fields(self, data: dict[str, Any]) -> list[str]:
        """The fields of an answer that are not the new ones."""
        stale = []
        if data["url"] != self.url:
            stale.append(f"url {data['url']}")
        if data["site_name"] != self.site_name:
            stale.append(f"site name {data['site_name']!r}")
        if f"/{self.section}/" not in data["navigation"]:
            stale.append(f"navigation {' '.join(data['navigation'])}")
        return stale


@dataclass
class WorkerRound:
    """One worker in one round."""

    pid: int
    #: This worker made the round's update.
    updated: bool
    #: The URL was served from the worker's memory before the update.
    held_before: bool
    #: Round trips of the worker's last read before the update.
    round_trips_before: int
    #: Its first answer after the update was the new one.
    fresh: bool
    #: Round trips of its first read after the update.
    round_trips_after: int
    #: Seconds from the update's answer to its first new answer (None: it
    #: was still stale after STALE_WINDOW seconds).
    fresh_after: float | None
    #: Reads after the update until the new answer (or the window ended).
    reads: int
    #: What its first answer after the update had that was not new.
    stale: list[str] = field(default_factory=list)


@dataclass
class Round:
    """One update and what every worker served after it."""

    number: int
    expected: Expected
    updated_by: int
    update_round_trips: int
    workers: list[WorkerRound]


@dataclass
class Run:
    """All the rounds of one server, with syncache on or off."""

    syncache: bool
    pids: list[int]
    rounds: list[Round]

    def stale_reads(self) -> list[tuple[int, WorkerRound]]:
        """(round number, worker) of every first read after an update that
        was not the new value."""
        return [(r.number, w) for r in self.rounds for w in r.workers if not w.fresh]

    def not_held(self) -> list[tuple[int, WorkerRound]]:
        """Workers whose URL was not in memory before an update: their round
        proves nothing about invalidation."""
        return [
            (r.number, w) for r in self.rounds for w in r.workers if not w.held_before
        ]


def _warm(connection: WorkerConnection) -> Answer:
    """Read until the worker serves the URL from its memory."""
    for _ in range(MAX_WARM_READS):
        answer = connection.read()
        if answer.data["url_was_cached"]:
            break
    return answer


def _read_until_fresh(
    connection: WorkerConnection, expected: Expected, updated_at: float
) -> tuple[Answer, Answer | None, int]:
    """Read until the answer is new or STALE_WINDOW has passed; return the
    first answer, the first new one (None if none) and the number of reads."""
    first = answer = connection.read()
    reads = 1
    while expected.stale_fields(answer.data):
        if answer.received_at - updated_at >= STALE_WINDOW:
            return first, None, reads
        time.sleep(STALE_POLL)
        answer = connection.read()
        reads += 1
    return first, answer, reads


def run_round(
    number: int,
    connections: list[WorkerConnection],
    updater: WorkerConnection,
    expected: Expected,
    pool: ThreadPoolExecutor,
) -> Round:
    before = list(pool.map(_warm, connections))
    update = updater.request(
        "POST",
        "/demo/update/",
        {"section": expected.section, "site_name": expected.site_name},
    )
    updated_at = update.received_at
    after = list(
        pool.map(
            lambda connection: _read_until_fresh(connection, expected, updated_at),
            connections,
        )
    )
    workers = []
    for connection, warm, (first, fresh, reads) in zip(
        connections, before, after, strict=True
    ):
        workers.append(
            WorkerRound(
                pid=connection.pid,
                updated=connection is updater,
                held_before=bool(warm.data["url_was_cached"]),
                round_trips_before=warm.round_trips,
                fresh=not expected.stale_fields(first.data),
                round_trips_after=first.round_trips,
                fresh_after=None if fresh is None else fresh.received_at - updated_at,
                reads=reads,
                stale=expected.stale_fields(first.data),
            )
        )
    return Round(number, expected, updater.pid, update.round_trips, workers)


def run(
    site: Site,
    workers: int,
    rounds: int,
    *,
    syncache: bool,
    step: Callable[[str], contextlib.AbstractContextManager[None]],
) -> Run:
    """Start gunicorn, play ``rounds`` rounds, stop it."""
    label = "on" if syncache else "off"
    server = Server(site, workers, syncache=syncache)
    try:
        with step(f"Starting gunicorn with {workers} workers, syncache {label}"):
            server.wait_until_serving()
            connections = connect_to_every_worker(server)
        try:
            played = []
            with ThreadPoolExecutor(len(connections)) as pool:
                for number in range(1, rounds + 1):
                    expected = Expected(
                        section=f"docs-{label}-{number}",
                        site_name=f"Example site, round {number} (syncache {label})",
                    )
                    updater = connections[(number - 1) % len(connections)]
                    with step(f"Round {number}: update through worker {updater.pid}"):
                        played.append(
                            run_round(number, connections, updater, expected, pool)
                        )
        finally:
            for connection in connections:
                connection.close()
    finally:
        with step("Stopping gunicorn"):
            server.stop()
    return Run(syncache, [c.pid for c in connections], played)
