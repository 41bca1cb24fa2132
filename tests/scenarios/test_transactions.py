"""Invalidation and transactions, with real processes (DESIGN.md promise 4).

The parent (this pytest process) changes rows inside ``transaction.atomic``;
spawned workers read them through the model caches of ``tests/models.py``
after ``syncache.check_all()``, as a request would. The database is the
pytest-django test database (a SQLite file every process opens), so the
workers see only committed rows.

Each worker runs :func:`observe` and reads once per phase; the parent acts
between phases. Ordering is by barriers only.

Bumps are counted in the parent by wrapping the medium's ``bump``; on the
backends whose bump is an atomic increment the stored generation must also
have moved by exactly one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import transaction
from django.test import override_settings

import syncache
from syncache.medium import get_medium
from tests.harness.backends import Backend
from tests.harness.workers import make_barrier, start_processes
from tests.models import (
    MODEL_CACHES_KEY_PREFIX,
    PageTree,
    SiteSetting,
    get_setting,
    site_settings,
)

WORKERS = 2


class Rollback(Exception):
    """Raised to roll a transaction back."""


# -- the worker side -----------------------------------------------------------


def _read(what: tuple[str, Any]) -> dict[str, Any]:
    """One request's worth: check, then read through the model cache."""
    syncache.check_all()
    kind, name = what
    if kind == "page":
        cache = PageTree._url_cache
        was_cached = name in cache
        value = PageTree.objects.get(pk=name).get_absolute_url()
    else:
        cache = site_settings
        was_cached = name in cache
        value = get_setting(name)
    return {
        "value": value,
        "was_cached": was_cached,
        "cached": cache.get(name) == value,
        "ext_clears": cache.ext_clear_counter,
        "key": cache.cache_key,
    }


def observe(index: int, what: tuple[str, Any], barrier: Any, phases: int) -> list[Any]:
    """Read ``what`` once per phase. Between two phases: tell the parent the
    read is done (barrier), and wait until it has acted (barrier)."""
    reads = [_read(what)]
    for _ in range(phases - 1):
        barrier.wait()  # this phase's reads are done
        barrier.wait()  # the parent acted
        reads.append(_read(what))
    return reads


# -- the parent side -----------------------------------------------------------


class Phases:
    """The parent's half of :func:`observe`'s protocol.

    Use it inside the worker group's ``with``: if the parent fails between
    phases, it aborts the barrier while the workers still wait on it, so they
    stop with ``BrokenBarrierError`` and the group reports them. (Left to the
    group, the barrier would be aborted only after the waiting workers were
    killed, and ``multiprocessing``'s ``Condition.notify_all`` then waits
    forever for the dead sleepers to acknowledge.)
    """

    def __init__(self, barrier: Any) -> None:
        self.barrier = barrier

    def __enter__(self) -> Phases:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is not None:
            self.barrier.abort()

    def read_done(self) -> None:
        self.barrier.wait()

    def go_read(self) -> None:
        self.barrier.wait()


@pytest.fixture
def workers_settings(shared_backend: Backend, transactional_db: Any) -> Iterator[Any]:
    """Run this test with the key prefix the model caches were made with, and
    return the settings for the workers (which make theirs with it too)."""
    with override_settings(SYNCACHE={"KEY_PREFIX": MODEL_CACHES_KEY_PREFIX}):
        overrides = shared_backend.settings_overrides
        assert overrides["SYNCACHE"]["KEY_PREFIX"] == MODEL_CACHES_KEY_PREFIX
        yield overrides


class BumpCounter:
    """Counts the bumps of one generation key made by this process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, key: str) -> None:
        self.key = key
        self.count = 0
        self.medium = get_medium()
        real_bump = self.medium.bump

        def bump(bumped_key: str) -> Any:
            if bumped_key == key:
                self.count += 1
            return real_bump(bumped_key)

        monkeypatch.setattr(self.medium, "bump", bump)

    def stored(self) -> Any:
        return self.medium.get(self.key)


def _same_key_everywhere(results: list[list[dict[str, Any]]], key: str) -> None:
    keys = {read["key"] for reads in results for read in reads}
    assert keys == {key}, "every process uses the same generation key"


def test_commit_in_parent_reaches_every_worker(workers_settings: Any) -> None:
    """django-tools' PageTree: ``save()`` inside a transaction calls
    ``clear()``. A worker that checks while the transaction is open sees the
    clear but reloads the old row; the commit clears it again."""
    root = PageTree.objects.create(slug="root")
    page = PageTree.objects.create(parent=root, slug="old")
    barrier = make_barrier(WORKERS + 1)
    with (
        start_processes(
            observe,
            WORKERS,
            ("page", page.pk),
            barrier,
            4,
            settings_overrides=workers_settings,
        ) as workers,
        Phases(barrier) as phases,
    ):
        phases.read_done()  # 0: warm, old URL cached
        with transaction.atomic():
            page.slug = "new"
            page.save()
            phases.go_read()
            phases.read_done()  # 1: checked and refilled while uncommitted
        phases.go_read()
        phases.read_done()  # 2: checked after the commit
        phases.go_read()  # 3: once more
        results = workers.join()
    _same_key_everywhere(results, PageTree._url_cache.cache_key)
    for reads in results:
        warm, during, after, again = reads
        assert (warm["value"], warm["cached"]) == ("/root/old/", True)
        assert (during["value"], during["was_cached"]) == ("/root/old/", False), (
            "the clear inside the transaction reaches the workers at once"
        )
        assert during["cached"], "the old URL was cached again from the old row"
        assert (after["value"], after["was_cached"]) == ("/root/new/", False), (
            "the commit cleared the URL reloaded from the uncommitted row"
        )
        assert (again["value"], again["was_cached"]) == ("/root/new/", True)


def test_clear_on_change_bumps_once_on_commit_never_on_rollback(
    workers_settings: Any, shared_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``clear_on_change``: nothing before the commit, nothing at all on a
    rollback, one bump per committed transaction however many rows it
    saved."""
    title = SiteSetting.objects.create(name="title", value="first")
    motto = SiteSetting.objects.create(name="motto", value="first")
    bumps = BumpCounter(monkeypatch, site_settings.cache_key)
    generation = bumps.stored()
    assert generation is not None
    barrier = make_barrier(WORKERS + 1)
    with (
        start_processes(
            observe,
            WORKERS,
            ("setting", "title"),
            barrier,
            4,
            settings_overrides=workers_settings,
        ) as workers,
        Phases(barrier) as phases,
    ):
        phases.read_done()  # 0: warm
        with pytest.raises(Rollback), transaction.atomic():
            title.value = "rolled back"
            title.save()
            motto.save()
            phases.go_read()
            phases.read_done()  # 1: read while the transaction is open
            raise Rollback
        assert bumps.count == 0, "a rollback bumps nothing"
        assert bumps.stored() == generation
        phases.go_read()
        phases.read_done()  # 2: read after the rollback
        with transaction.atomic():
            for value in ("second", "third"):
                title.value = value
                title.save()
            motto.value = "second"
            motto.save()
            title.delete()
            SiteSetting.objects.create(name="title", value="fourth")
        assert bumps.count == 1, (
            f"one committed transaction that changed 5 rows bumped the "
            f"generation {bumps.count} times"
        )
        committed = bumps.stored()
        assert committed != generation
        if shared_backend.atomic_incr:
            assert committed == generation + 1, "an atomic increment, once"
        phases.go_read()  # 3: read after the commit
        results = workers.join()
    _same_key_everywhere(results, site_settings.cache_key)
    for reads in results:
        warm, during, after_rollback, after_commit = reads
        assert warm["value"] == "first"
        assert (during["value"], during["was_cached"]) == ("first", True), (
            "nothing is invalidated before the commit"
        )
        assert (after_rollback["value"], after_rollback["was_cached"]) == (
            "first",
            True,
        ), "nothing is invalidated by a rollback"
        assert after_rollback["ext_clears"] == warm["ext_clears"]
        assert (after_commit["value"], after_commit["was_cached"]) == (
            "fourth",
            False,
        )
        assert after_commit["ext_clears"] == warm["ext_clears"] + 1


def test_update_then_invalidate_on_commit(
    workers_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``QuerySet.update()`` sends no signal; ``invalidate_on_commit`` after
    it invalidates when the transaction commits, and not on a rollback."""
    SiteSetting.objects.create(name="title", value="first")
    bumps = BumpCounter(monkeypatch, site_settings.cache_key)
    generation = bumps.stored()
    barrier = make_barrier(WORKERS + 1)
    with (
        start_processes(
            observe,
            WORKERS,
            ("setting", "title"),
            barrier,
            4,
            settings_overrides=workers_settings,
        ) as workers,
        Phases(barrier) as phases,
    ):
        phases.read_done()  # 0: warm
        with pytest.raises(Rollback), transaction.atomic():
            SiteSetting.objects.filter(name="title").update(value="rolled back")
            syncache.invalidate_on_commit(site_settings)
            raise Rollback
        assert bumps.count == 0
        assert bumps.stored() == generation
        phases.go_read()
        phases.read_done()  # 1: after the rollback
        with transaction.atomic():
            SiteSetting.objects.filter(name="title").update(value="draft")
            syncache.invalidate_on_commit(site_settings)
            SiteSetting.objects.filter(name="title").update(value="second")
            syncache.invalidate_on_commit(site_settings)
            assert bumps.stored() == generation, "no bump before the commit"
            phases.go_read()
            phases.read_done()  # 2: while the transaction is open
        assert bumps.count == 1, "two calls in one transaction bump once"
        assert bumps.stored() != generation
        phases.go_read()  # 3: after the commit
        results = workers.join()
    _same_key_everywhere(results, site_settings.cache_key)
    for reads in results:
        warm, after_rollback, during, after_commit = reads
        assert warm["value"] == "first"
        assert (after_rollback["value"], after_rollback["was_cached"]) == (
            "first",
            True,
        )
        assert (during["value"], during["was_cached"]) == ("first", True)
        assert (after_commit["value"], after_commit["was_cached"]) == (
            "second",
            False,
        )


# -- this process after a rollback ---------------------------------------------
#
# A request checks (middleware), then its view runs in a transaction (as under
# ATOMIC_REQUESTS): it saves a row, reads it back through a model cache (the
# page it renders), and fails. The rollback undoes the row, which nobody else
# ever saw: the next request of this process must not serve it either.


@pytest.mark.parametrize("backend", ["locmem"], indirect=True)
@pytest.mark.django_db(transaction=True)
def test_rollback_leaves_no_uncommitted_url_in_this_process(
    backend: Backend,
) -> None:
    """django-tools' PageTree, whose ``save()`` calls ``clear()``."""
    page = PageTree.objects.create(slug="committed")
    syncache.check_all()  # a request
    assert PageTree.objects.get(pk=page.pk).get_absolute_url() == "/committed/"
    syncache.check_all()  # the next request
    with pytest.raises(Rollback), transaction.atomic():
        page.slug = "rolled-back"
        page.save()
        assert PageTree.objects.get(pk=page.pk).get_absolute_url() == "/rolled-back/"
        raise Rollback
    syncache.check_all()  # the next request
    assert PageTree.objects.get(pk=page.pk).get_absolute_url() == "/committed/"


@pytest.mark.parametrize("backend", ["locmem"], indirect=True)
@pytest.mark.django_db(transaction=True)
def test_rollback_leaves_no_uncommitted_setting_in_this_process(
    backend: Backend,
) -> None:
    """SiteSetting, whose cache ``clear_on_change`` invalidates on commit."""
    SiteSetting.objects.create(name="title", value="committed")
    syncache.check_all()  # a request (this process has not read the setting)
    assert "title" not in site_settings
    with pytest.raises(Rollback), transaction.atomic():
        setting = SiteSetting.objects.get(name="title")
        setting.value = "rolled back"
        setting.save()
        assert get_setting("title") == "rolled back", "this transaction's row"
        raise Rollback
    syncache.check_all()  # the next request
    assert SiteSetting.objects.get(name="title").value == "committed"
    assert get_setting("title") == "committed", (
        "the value read from a rolled-back row outlived the rollback"
    )
