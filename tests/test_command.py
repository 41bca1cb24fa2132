"""``manage.py syncache``: status, bump and clear-all.

The status and bump tests run on every backend (``backend``); the tests of
argument handling and reporting, which do not depend on the backend, run on
locmem only; the subprocess tests run the real command line on one shared
backend.

Every LocalSyncCache made here has an id of its own and leaves the registry
at the end of the test (``make_cache``), and every synchronizer key is
unique, so the registry-wide listings may hold other tests' leftovers: the
assertions look only at this test's rows.
"""

from __future__ import annotations

import gc
import json
import re
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from io import StringIO
from typing import Any
from unittest import mock

import pytest
from django.core.cache import caches
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from syncache import GenerationSynchronizer, LocalSyncCache
from syncache.management.commands.syncache import Command
from syncache.medium import get_medium
from tests.harness.backends import Backend
from tests.harness.workers import PROJECT_ROOT

MakeCache = Callable[..., LocalSyncCache]

SUBPROCESS_TIMEOUT = 60


def unique(name: str) -> str:
    """An id or key no other test uses."""
    return f"cmd-{name}-{secrets.token_hex(4)}"


def run(*args: str) -> str:
    """Run ``manage.py syncache *args`` in this process; return its stdout."""
    out = StringIO()
    call_command("syncache", *args, stdout=out, no_color=True)
    return out.getvalue()


def status_json() -> dict[str, Any]:
    report: dict[str, Any] = json.loads(run("status", "--json"))
    return report


def row_of(rows: list[dict[str, Any]], field: str, value: str) -> dict[str, Any]:
    [row] = [row for row in rows if row[field] == value]
    return row


def line_of(output: str, start: str) -> list[str]:
    """The cells of the table line that starts with ``start``."""
    [line] = [line for line in output.splitlines() if line.startswith(start + " ")]
    return re.split(r"\s{2,}", line)


def stored(key: str) -> Any:
    return caches["default"].get(key)


# -- status ------------------------------------------------------------------


def test_status_lists_caches_and_synchronizers(
    backend: Backend, make_cache: MakeCache
) -> None:
    cache = make_cache()
    cache["a"] = 1
    cache["b"] = 2
    key = unique("sync")
    sync = GenerationSynchronizer(key)
    writer = GenerationSynchronizer(key)
    writer.mark_updated()

    output = run("status")

    assert backend.caches["default"]["BACKEND"] in output
    assert type(get_medium()).__name__ in output
    assert f"Key prefix: {backend.key_prefix}" in output
    cells = line_of(output, cache.id)
    assert cells[:5] == [
        cache.id,
        str(cache.sync_gen),
        str(cache.sync_gen),
        "current",
        "2",
    ]
    assert cells[-2:] == ["never", "never"]
    assert cells[1] == str(stored(cache.cache_key))
    # Both holders of the key, each with its own held generation.
    rows = [
        re.split(r"\s{2,}", line)
        for line in output.splitlines()
        if line.startswith(sync.cache_key + " ")
    ]
    assert sorted(rows) == sorted(
        [
            [sync.cache_key, str(writer.sync_gen), str(sync.sync_gen), "expired"],
            [sync.cache_key, str(writer.sync_gen), str(writer.sync_gen), "current"],
        ]
    )
    # The LocalSyncCache's own synchronizer is not listed as a synchronizer.
    assert cache.cache_key not in output


def test_status_json(backend: Backend, make_cache: MakeCache) -> None:
    cache = make_cache()
    cache["a"] = 1
    cache.check_state()
    cleared = make_cache()
    cleared.clear()
    sync = GenerationSynchronizer(unique("sync"))
    missing = GenerationSynchronizer(unique("missing"))
    caches["default"].delete(missing.cache_key)

    report = status_json()

    assert report["cache_alias"] == "default"
    assert report["key_prefix"] == backend.key_prefix
    [medium] = report["media"]
    assert medium == {
        "alias": "default",
        "backend": backend.caches["default"]["BACKEND"],
        "medium": type(get_medium()).__name__,
        "capabilities": asdict(get_medium().capabilities),
        "checks": "polling: each check reads the cache",
    }
    row = row_of(report["local_caches"], "id", cache.id)
    assert isinstance(row["generation"], int)
    assert row["generation"] == cache.sync_gen == stored(cache.cache_key)
    assert row["sync_gen"] == cache.sync_gen
    assert row["generation_status"] == "stored"
    assert row["current"] is True
    assert row["state"] == "current"
    assert row["cache_key"] == cache.cache_key
    assert row["alias"] == "default"
    assert row["length"] == 1
    assert row["request_counter"] == 1
    assert row["own_clear_counter"] == 0
    assert row["ext_clear_counter"] == 0
    assert row["stale_clear_counter"] == 0
    assert row["init_counter"] == 1
    assert 0 <= row["last_checked"] < 60
    assert row["last_cleared"] is None
    assert row["defined_at"] == cache.defined_at
    assert "tests/conftest.py:" in row["defined_at"], "where make_cache made it"
    row = row_of(report["local_caches"], "id", cleared.id)
    assert row["own_clear_counter"] == 1
    assert row["generation"] == cleared.sync_gen
    assert row["last_checked"] is None
    assert 0 <= row["last_cleared"] < 60

    row = row_of(report["synchronizers"], "cache_key", sync.cache_key)
    assert row == {
        "cache_key": sync.cache_key,
        "alias": "default",
        "generation": sync.sync_gen,
        "generation_status": "stored",
        "sync_gen": sync.sync_gen,
        "current": True,
        "state": "current",
    }
    assert isinstance(row["generation"], int)
    row = row_of(report["synchronizers"], "cache_key", missing.cache_key)
    assert row["generation"] is None
    assert row["generation_status"] == "missing"
    assert row["sync_gen"] == missing.sync_gen is not None
    assert row["current"] is False
    assert row["state"] == "expired"
    internal = {c["cache_key"] for c in report["local_caches"]}
    assert not internal & {s["cache_key"] for s in report["synchronizers"]}


@pytest.mark.parametrize("backend", ["locmem"], indirect=True)
def test_status_unreadable_generations(
    backend: Backend, make_cache: MakeCache, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache()
    sync = GenerationSynchronizer(unique("sync"))
    medium = get_medium()
    with mock.patch.object(medium, "get_many", side_effect=ConnectionError("down")):
        report = status_json()
        output = run("status")
    for row in (
        row_of(report["local_caches"], "id", cache.id),
        row_of(report["synchronizers"], "cache_key", sync.cache_key),
    ):
        assert row["generation"] is None
        assert row["generation_status"] == "unreadable"
        assert row["current"] is False
    assert line_of(output, cache.id)[1:4] == [
        "(unreadable)",
        str(cache.sync_gen),
        "expired",
    ]
    assert line_of(output, sync.cache_key)[1] == "(unreadable)"


@pytest.mark.parametrize("backend", ["locmem"], indirect=True)
def test_status_with_two_aliases(backend: Backend, make_cache: MakeCache) -> None:
    other = {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": unique("other"),
    }
    with override_settings(CACHES={**backend.caches, "other": other}):
        here = make_cache()
        there = make_cache(here.id, unique_ids=False, cache_alias="other")
        report = status_json()
        output = run("status")
        assert [m["alias"] for m in report["media"]] == ["default", "other"]
        rows = [r for r in report["local_caches"] if r["id"] == here.id]
        assert [(r["alias"], r["generation"]) for r in rows] == [
            ("default", here.sync_gen),
            ("other", there.sync_gen),
        ]
        assert "Cache 'other'" in output
        assert {line_of_alias[-1] for line_of_alias in _lines(output, here.id)} == {
            "default",
            "other",
        }
        # One id on two aliases is two generations: bump clears both.
        run("bump", here.id)
        assert here.own_clear_counter + there.own_clear_counter == 2


def _lines(output: str, start: str) -> list[list[str]]:
    return [
        re.split(r"\s{2,}", line)
        for line in output.splitlines()
        if line.startswith(start + " ")
    ]


# -- bump ----------------------------------------------------------------------


def test_bump_local_cache_expires_the_other_instances(
    backend: Backend, make_cache: MakeCache
) -> None:
    cache_id = unique("shared")
    first = make_cache(cache_id, unique_ids=False)
    second = make_cache(cache_id, unique_ids=False)
    first["k"] = second["k"] = "old"
    before = stored(first.cache_key)
    # A holder of the generation key, standing in for another process.
    remote = GenerationSynchronizer(first.cache_key, normalize_cache_key=False)

    output = run("bump", cache_id)

    assert f"Cleared LocalSyncCache {cache_id!r}" in output
    assert stored(first.cache_key) != before
    assert remote.is_expired()
    assert first.own_clear_counter + second.own_clear_counter == 1, (
        "one instance is cleared: the others follow at their next check"
    )
    [other] = [c for c in (first, second) if not c.own_clear_counter]
    assert other == {"k": "old"}, "not emptied before its check"
    other.check_state()
    assert other == {}
    assert other.ext_clear_counter == 1
    first.check_state()
    second.check_state()
    assert first == second == {}
    assert first.sync_gen == second.sync_gen == stored(first.cache_key)


def test_bump_synchronizer_key_expires_every_holder(backend: Backend) -> None:
    key = unique("sync")
    holder = GenerationSynchronizer(key)
    other = GenerationSynchronizer(key)
    before = holder.sync_gen
    assert not holder.is_expired() and not other.is_expired()

    output = run("bump", holder.cache_key)

    assert f"Bumped synchronizer {holder.cache_key!r}" in output
    assert stored(holder.cache_key) != before
    assert other.is_expired()
    assert holder.is_expired(), "no holder of this process adopts the bump"
    other.refresh()
    assert not other.is_expired()


@pytest.mark.parametrize("backend", ["locmem"], indirect=True)
def test_bump_several_ids_at_once(backend: Backend, make_cache: MakeCache) -> None:
    cache = make_cache()
    cache["k"] = 1
    sync = GenerationSynchronizer(unique("sync"))
    output = run("bump", cache.id, sync.cache_key, cache.id)
    assert cache == {}
    assert cache.own_clear_counter == 1, "a repeated id is bumped once"
    assert sync.is_expired()
    assert output.count("Cleared") == 1 and output.count("Bumped") == 1


@pytest.mark.parametrize("backend", ["locmem"], indirect=True)
def test_bump_unknown_id_bumps_nothing(backend: Backend, make_cache: MakeCache) -> None:
    cache = make_cache()
    cache["k"] = 1
    sync = GenerationSynchronizer(unique("sync"))
    generations = (stored(cache.cache_key), stored(sync.cache_key))

    with pytest.raises(CommandError) as raised:
        run("bump", cache.id, "no-such-id", sync.cache_key, "neither-this")

    message = str(raised.value)
    assert "'no-such-id'" in message and "'neither-this'" in message
    assert "Nothing was bumped" in message
    assert repr(cache.id) in message, "the known LocalSyncCache ids are listed"
    assert repr(sync.cache_key) in message, "the known keys are listed"
    assert (stored(cache.cache_key), stored(sync.cache_key)) == generations
    assert cache == {"k": 1} and cache.own_clear_counter == 0
    assert not sync.is_expired()
    cache.check_state()
    assert cache == {"k": 1}


@pytest.mark.parametrize("backend", ["locmem"], indirect=True)
def test_bump_without_ids_is_an_error(backend: Backend) -> None:
    with pytest.raises(CommandError, match="ID"):
        run("bump")
    with pytest.raises(CommandError, match="status,bump,clear-all"):
        run()


@pytest.mark.parametrize("backend", ["locmem"], indirect=True)
def test_bump_reports_a_backend_failure(
    backend: Backend, make_cache: MakeCache, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache()
    sync = GenerationSynchronizer(unique("sync"))
    with (
        mock.patch.object(get_medium(), "bump", side_effect=ConnectionError("down")),
        pytest.raises(CommandError, match="2 invalidation") as raised,
    ):
        run("bump", cache.id, sync.cache_key)
    assert cache.id in str(raised.value) and sync.cache_key in str(raised.value)


# -- clear-all -------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["locmem"], indirect=True)
def test_clear_all(backend: Backend, make_cache: MakeCache) -> None:
    gc.collect()  # so that no other test's instance vanishes in the middle
    shared_id = unique("shared")
    caches_made = [
        make_cache(),
        make_cache(),
        make_cache(shared_id, unique_ids=False),
        make_cache(shared_id, unique_ids=False),
    ]
    for cache in caches_made:
        cache["k"] = 1
    key = unique("sync")
    syncs = [
        GenerationSynchronizer(key),
        GenerationSynchronizer(key),
        GenerationSynchronizer(unique("sync")),
    ]
    report = status_json()
    ids = {row["id"] for row in report["local_caches"]}
    keys = {row["cache_key"] for row in report["synchronizers"]}

    output = run("clear-all")

    assert (
        f"Cleared {len(ids)} LocalSyncCache id(s) and bumped {len(keys)} "
        f"synchronizer key(s)." in output
    )
    assert "Cleared LocalSyncCache" not in output, "details only with -v 2"
    assert sum(c.own_clear_counter for c in caches_made) == 3, "once per id"
    for cache in caches_made:
        cache.check_state()
        assert cache == {}
    assert all(sync.is_expired() for sync in syncs)
    verbose = StringIO()
    call_command("syncache", "clear-all", verbosity=2, stdout=verbose)
    assert f"Cleared LocalSyncCache {shared_id!r}" in verbose.getvalue()
    assert f"Bumped synchronizer {syncs[0].cache_key!r}" in verbose.getvalue()


# -- help ------------------------------------------------------------------------


def test_help_explains_which_instances_are_known() -> None:
    parser = Command().create_parser("manage.py", "syncache")
    text = parser.format_help()
    assert "status" in text and "bump" in text and "clear-all" in text
    assert "django.setup()" in " ".join(text.split())


# -- the real command line ----------------------------------------------------------


def _run_process(backend: Backend, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        env=backend.env(),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )


@pytest.mark.parametrize("shared_backend", ["redis"], indirect=True)
def test_command_line(shared_backend: Backend) -> None:
    done = _run_process(
        shared_backend, ["-m", "django", "syncache", "status", "--json"]
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["key_prefix"] == shared_backend.key_prefix
    assert report["media"][0]["backend"] == shared_backend.caches["default"]["BACKEND"]
    assert isinstance(report["local_caches"], list)
    assert isinstance(report["synchronizers"], list)

    done = _run_process(
        shared_backend, ["-m", "django", "syncache", "bump", "no-such-id"]
    )
    assert done.returncode != 0
    assert "CommandError" in done.stderr and "'no-such-id'" in done.stderr
    assert done.stdout == ""


#: A process that defines a LocalSyncCache and a synchronizer, as a project
#: module imported at startup would, then runs the command line.
_BUMPING_PROCESS = """
import sys
import django
django.setup()
from django.core.management import execute_from_command_line
from syncache import GenerationSynchronizer, LocalSyncCache
cache = LocalSyncCache(sys.argv[1])
sync = GenerationSynchronizer(sys.argv[2])
execute_from_command_line(["manage.py", "syncache", "bump", cache.id, sync.cache_key])
"""


@pytest.mark.parametrize("shared_backend", ["redis"], indirect=True)
def test_bump_from_another_process(
    shared_backend: Backend, make_cache: MakeCache
) -> None:
    mine = make_cache()
    mine["k"] = 1
    name = unique("sync")
    holder = GenerationSynchronizer(name)

    done = _run_process(shared_backend, ["-c", _BUMPING_PROCESS, mine.id, name])

    assert done.returncode == 0, done.stderr
    assert f"Cleared LocalSyncCache {mine.id!r}" in done.stdout
    assert holder.is_expired()
    mine.check_state()
    assert mine == {}
    assert mine.ext_clear_counter == 1
