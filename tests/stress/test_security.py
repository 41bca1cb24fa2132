"""Security: what reaches the cache server, where tokens come from, and what
syncache unpickles from the shared cache.

* Keys: hostile input (spaces, CR LF, NUL, non-ASCII, separators, 500
  characters) through every entry point; Redis ``MONITOR`` shows every
  command the server ran, memcached ``lru_crawler metadump`` every key it
  holds afterwards. No key carries the raw input: every key is printable
  ASCII without spaces, at most 250 bytes, and the groups' and spin locks'
  keys (hashes) carry no trace of it at all.
* Lock tokens and generations come from ``secrets``: the functions are
  wrapped to record what they return, and what the cache holds is compared
  with it.
* Unpickling: the places where syncache itself calls ``pickle.loads`` are
  listed (an AST scan fails on any new one), and a value planted in the
  cache by someone with write access to it (a pickle that creates a marker
  directory when loaded) must be treated as an opaque generation, never run.
"""

from __future__ import annotations

import ast
import os
import pathlib
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.cache import caches

import syncache
from syncache import (
    CacheMutex,
    GenerationSynchronizer,
    Group,
    HashDSpinlock,
    LocalSyncCache,
    check_all,
    get_or_create,
)
from syncache.dogpile import GEN_SUFFIX
from syncache.dogpile import NAMESPACE as DOGPILE_NAMESPACE
from syncache.keys import make_cache_key
from syncache.medium import get_medium
from syncache.synchronizer import fetch_generations
from tests.harness.backends import Backend
from tests.harness.servers import RedisServer
from tests.stress.servers import memcached_keys, redis_commands_seen

#: Input an attacker controls: each has characters that must never reach a
#: server unescaped.
HOSTILE = [
    "two words",
    "line\r\nFLUSHALL\r\nset x 0 0 1",
    "nul\x00byte",
    "ünïcödé ☃",
    "sep:ar!at#ors%41",
    "long " + "x" * 500,
]
#: An alphanumeric secret: percent-encoding keeps it, hashing does not.
SECRET = "S3cr3tUserToken"


def exercise_every_entry_point(user_input: str) -> None:
    """Every public entry point that takes user data, with ``user_input``."""
    cache = LocalSyncCache(user_input, unique_ids=False)
    cache["k"] = 1
    cache.clear()
    check_all()
    sync = GenerationSynchronizer(["user", user_input])
    sync.mark_updated()
    sync.is_expired()
    group = Group("view", q=user_input)
    group.get_or_set("page", "rendered")
    group.bump()
    get_or_create(["search", user_input], lambda: "result", 60)
    with CacheMutex(["edit", user_input], timeout=5):
        pass
    with HashDSpinlock(("report", user_input)):
        pass

    @syncache.cache_on_arguments(60, namespace="fn")
    def compute(argument: str) -> str:
        return "computed"

    compute(user_input)


def assert_safe_key(key: bytes) -> None:
    assert len(key) <= 250, f"{key!r} is longer than memcached's 250 bytes"
    assert all(33 <= byte < 127 for byte in key), f"{key!r} is not printable ASCII"


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_redis_sees_no_raw_user_input(backend: Backend, fresh_registry: Any) -> None:
    server = backend.server
    assert isinstance(server, RedisServer)
    prefix = caches["default"].make_key("").encode()  # ":1:" and so on
    with redis_commands_seen(server) as commands:
        for user_input in [*HOSTILE, SECRET]:
            exercise_every_entry_point(user_input)
    assert len(commands) > 50, "MONITOR saw the commands"
    keys = [arg for command in commands for arg in command if arg.startswith(prefix)]
    assert keys, "no key seen"
    for key in keys:
        assert_safe_key(key)
    for command in commands:
        for arg in command:
            for user_input in HOSTILE:
                raw = user_input.encode()
                assert raw not in arg, f"{user_input!r} reached Redis in {command!r}"
    hashed = [
        key
        for key in keys
        if b"group" in key or b"dspinlock" in key or b"grouped" in key
    ]
    assert hashed and not [key for key in hashed if SECRET.encode() in key], (
        "group and spin lock keys are hashes: no user data"
    )


@pytest.mark.parametrize("backend", ["memcached"], indirect=True)
def test_memcached_holds_no_raw_user_input(
    backend: Backend, fresh_registry: Any
) -> None:
    assert backend.server is not None
    for user_input in [*HOSTILE, SECRET]:
        exercise_every_entry_point(user_input)
    keys = [
        key.encode("utf-8", "surrogateescape") for key in memcached_keys(backend.server)
    ]
    mine = [key for key in keys if backend.key_prefix.encode() in key]
    assert len(mine) > 20
    for key in mine:
        assert_safe_key(key)
        for user_input in HOSTILE:
            assert user_input.encode() not in key


# -- tokens ------------------------------------------------------------------------


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[Any]]]:
    """Wrap ``secrets.token_hex`` and ``secrets.randbits`` (what syncache
    calls them through) to record what they return."""
    calls: dict[str, list[Any]] = {"token_hex": [], "randbits": []}
    for name in calls:
        real = getattr(secrets, name)

        def spy(*args: Any, _real: Any = real, _name: str = name) -> Any:
            value = _real(*args)
            calls[_name].append(value)
            return value

        monkeypatch.setattr(secrets, name, spy)
    yield calls


@pytest.mark.parametrize(
    "lock_backend", ["redis", "memcached", "sqlite"], indirect=True
)
def test_lock_tokens_come_from_secrets(
    lock_backend: Backend, recorded: dict[str, list[Any]]
) -> None:
    medium = get_medium()
    mutex = CacheMutex("token-source", timeout=30)
    with mutex:
        stored = medium.lock_value(mutex.lock_key)
    assert stored in recorded["token_hex"] and len(stored) == 32
    lock = HashDSpinlock("token-source")
    with lock:
        state_key = lock.state_key
        state = medium.lock_value(state_key)
    kind, _, token = str(state).partition(",")
    assert kind == "computing" and token in recorded["token_hex"]


@pytest.mark.parametrize("backend", ["redis", "memcached", "file"], indirect=True)
def test_generations_come_from_secrets(
    backend: Backend, recorded: dict[str, list[Any]]
) -> None:
    sync = GenerationSynchronizer("generation-source")
    seed = get_medium().get(sync.cache_key)
    assert seed in recorded["randbits"], "a new generation is a secrets.randbits(62)"


# -- unpickling --------------------------------------------------------------------

#: Where syncache itself calls a ``loads``/``decode``/``deserialize`` that
#: unpickles, with why (docs/reliability.rst, "Trust boundary"). A new one
#: fails the test below until it is reviewed and listed.
KNOWN_UNPICKLERS = {
    # LocMemCache's own dict, in this process: not shared.
    ("medium.py", "LocMemMedium._owned"),
    # User data (get_or_create values, group entries, header lists), decoded
    # as Django's cache would: Redis, memcached (the cache's own serde, also
    # for everything read through Django's API), the database cache.
    ("medium.py", "RedisMedium._decode_pickled"),
    ("medium.py", "DjangoRedisMedium._decode_pickled"),
    ("medium.py", "_Serde.deserialize"),
    ("medium.py", "MemcachedMedium._decode"),
    ("medium.py", "DatabaseMedium._select"),
}
#: Where syncache unpickles with ``_PlainUnpickler``, which refuses every
#: class and function: generations, epochs, group versions and lock rows
#: on the database and file caches.
PLAIN_UNPICKLERS = {
    ("medium.py", "_plain_or_opaque"),
    ("medium.py", "FileMedium._read_generation"),
}


def _unpickling_calls() -> dict[tuple[str, str], set[bool]]:
    """(file, function) -> whether its unpickling calls are plain ones."""
    found: dict[tuple[str, str], set[bool]] = {}
    for path in pathlib.Path(syncache.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text())
        functions = [
            (f"{node.name}.{method.name}", method)
            for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef)
            for method in node.body
            if isinstance(method, ast.FunctionDef)
        ] + [
            (node.name, node) for node in tree.body if isinstance(node, ast.FunctionDef)
        ]
        for name, function in functions:
            for call in ast.walk(function):
                if not (
                    isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                ):
                    continue
                target = ast.unparse(call.func.value)
                if call.func.attr in ("loads", "load", "deserialize") or (
                    call.func.attr == "decode" and "client" in target
                ):
                    plain = "_PlainUnpickler" in target
                    found.setdefault((path.name, name), set()).add(plain)
    return found


def test_syncache_unpickles_only_where_listed() -> None:
    calls = _unpickling_calls()
    assert {where for where, plain in calls.items() if False in plain} == (
        KNOWN_UNPICKLERS
    )
    assert {where for where, plain in calls.items() if plain == {True}} == (
        PLAIN_UNPICKLERS
    )


class Poison:
    """Unpickling it creates a directory: the proof that it ran."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


#: Every backend whose medium reads the stored bytes itself.
SHARED_BACKENDS = ["redis", "django_redis", "memcached", "sqlite", "postgres", "file"]


def plant_and_read(
    targets: dict[str, tuple[str, Callable[[], object]]], tmp_path: pathlib.Path
) -> list[str]:
    """Plant a :class:`Poison` at each target's key through Django's API,
    make the target's read; return the targets whose poison ran."""
    ran = []
    for name, (key, read) in targets.items():
        marker = tmp_path / name.replace(" ", "-")
        caches["default"].set(key, Poison(marker), None)
        read()
        if marker.exists():
            ran.append(name)
    return ran


@pytest.mark.parametrize("backend", SHARED_BACKENDS, indirect=True)
def test_a_planted_generation_is_opaque(
    backend: Backend, fresh_registry: Any, tmp_path: pathlib.Path
) -> None:
    """Someone with write access to the cache plants a pickle at the keys
    syncache reads generations (and lock tokens) from; syncache must compare
    it, not run it: it is one more generation."""
    sync = GenerationSynchronizer("planted")
    local = LocalSyncCache("planted")
    group = Group("planted", pk=1)
    group.version()
    check_all()
    medium = get_medium()
    targets: dict[str, tuple[str, Callable[[], object]]] = {
        "generation": (sync.cache_key, sync.is_expired),
        "local": (local.cache_key, lambda: check_all(force=True)),
        "epoch": (medium.epoch_key, lambda: check_all(force=True)),
        "group version": (group.local_key, group.version),
    }
    if medium.capabilities.compare_and_delete:
        mutex = CacheMutex("planted", timeout=30)
        targets["lock"] = (
            mutex.lock_key,
            lambda: (mutex.locked(), mutex.acquire(wait=False)),
        )
    assert plant_and_read(targets, tmp_path) == []
    assert sync.is_expired(), "a planted value is another generation"
    sync.refresh()
    assert not sync.is_expired(), "compared by its bytes: equal to itself"
    assert medium.get(sync.cache_key) == sync.sync_gen


@pytest.mark.parametrize("backend", SHARED_BACKENDS, indirect=True)
def test_a_planted_generation_is_opaque_in_batched_reads(
    backend: Backend, fresh_registry: Any, tmp_path: pathlib.Path
) -> None:
    sync = GenerationSynchronizer("planted")
    group = Group("planted", pk=1)
    group.version()
    targets: dict[str, tuple[str, Callable[[], object]]] = {
        "group version, read with an entry": (group.local_key, lambda: group.get("x")),
        "group versions": (group.local_key, lambda: Group.versions([group])),
        "fresh generations": (
            sync.cache_key,
            lambda: fetch_generations([sync], fresh=True),
        ),
    }
    if get_medium().capabilities.compare_and_delete:  # get_or_create's lock
        get_or_create("planted", lambda: "value", 60)
        token = make_cache_key("planted", namespace=DOGPILE_NAMESPACE) + GEN_SUFFIX
        targets["get_or_create token"] = (
            token,
            lambda: get_or_create("planted", str, 60),
        )
    assert plant_and_read(targets, tmp_path) == []
