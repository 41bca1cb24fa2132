"""Requests while the cache server is down, and after (DESIGN.md promise 5).

Requests go through Django's test ``Client``, in this process, with
``LocalSyncCacheMiddleware`` installed (``tests/settings.py``) and the views
of ``tests/views.py``. The cache backend runs on a server of the test's own
(``redis_backend_isolated`` / ``memcached_backend_isolated``, Django's
default client options plus 0.5 s timeouts), which the test stops and
restarts.

While it is down: every request answers 200 (no exception reaches it), the
model caches are treated as expired, so each request recomputes its values
from the database (a row changed with no invalidation at all is seen at
once), changes through the views work, and syncache logs the outage once.
Once the server is back: values are cached again and invalidation works.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.cache import caches
from django.test import Client

from syncache import GenerationSynchronizer, LocalSyncCache
from tests.harness.backends import Backend
from tests.models import PageTree, SiteSetting, site_settings

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["redis", "memcached"])
def isolated(request: pytest.FixtureRequest) -> Backend:
    """The backend on a server this test may stop (0.5 s client timeouts)."""
    backend: Backend = request.getfixturevalue(f"{request.param}_backend_isolated")
    return backend


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture syncache's records, and Django's reports of failed on-commit
    callbacks (``robust=True`` callbacks log their exception instead of
    raising it, to a logger the test settings silence)."""
    django_db = logging.getLogger("django.db.backends.base")
    django_db.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="syncache"):
            yield caplog
    finally:
        django_db.removeHandler(caplog.handler)


def errors(logged: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in logged.records if r.levelno >= logging.ERROR]


@dataclass
class Site:
    """A page under a root page and a setting, and a client to read them."""

    client: Client
    root: PageTree
    page: PageTree

    @property
    def url(self) -> str:
        return f"/page/{self.page.pk}/url/"

    setting = "/setting/title/"

    def get(self, path: str) -> dict[str, Any]:
        response = self.client.get(path)
        assert response.status_code == 200, response.content
        answer: dict[str, Any] = response.json()
        return answer

    def post(self, path: str, data: dict[str, str]) -> dict[str, Any]:
        response = self.client.post(path, data)
        assert response.status_code == 200, response.content
        answer: dict[str, Any] = response.json()
        return answer

    def reads(self, path: str, times: int = 3) -> list[tuple[Any, bool]]:
        """``times`` requests: (value, was_cached) of each."""
        field = "url" if path.startswith("/page/") else "value"
        answers = [self.get(path) for _ in range(times)]
        return [(a[field], a["was_cached"]) for a in answers]


@pytest.fixture
def site() -> Site:
    registered = list(LocalSyncCache.CACHES)
    for cache in (PageTree._url_cache, site_settings):
        assert cache in registered, (
            f"{cache!r} is not in LocalSyncCache.CACHES: did a test replace "
            "or clear the registry without restoring it?"
        )
    root = PageTree.objects.create(slug="root")
    page = PageTree.objects.create(parent=root, slug="old")
    SiteSetting.objects.create(name="title", value="v1")
    return Site(Client(), root, page)


def _up_and_cached(site: Site, url: str, value: str) -> None:
    assert site.reads(site.url) == [(url, False), (url, True), (url, True)]
    assert site.reads(site.setting, 2) == [(value, False), (value, True)]


def test_requests_during_an_outage(
    isolated: Backend, site: Site, logged: pytest.LogCaptureFixture
) -> None:
    assert isolated.server is not None
    _up_and_cached(site, "/root/old/", "v1")
    assert not errors(logged)

    isolated.server.stop()
    # Every request recomputes from the database.
    assert site.reads(site.url) == [("/root/old/", False)] * 3
    assert site.reads(site.setting) == [("v1", False)] * 3
    # A row changed behind syncache's back (no invalidation) is seen at once.
    PageTree.objects.filter(pk=site.page.pk).update(slug="sneaky")
    SiteSetting.objects.filter(name="title").update(value="sneaky")
    assert site.reads(site.url, 1) == [("/root/sneaky/", False)]
    assert site.reads(site.setting, 1) == [("sneaky", False)]
    # Changes through the views (save() + clear(), the clear_on_change hook,
    # update() + invalidate_on_commit) answer normally.
    site.post(f"/page/{site.page.pk}/slug/", {"slug": "down"})
    assert site.reads(site.url, 2) == [("/root/down/", False)] * 2
    site.post("/setting/title/save/", {"value": "v2"})
    assert site.reads(site.setting, 2) == [("v2", False)] * 2
    site.post("/setting/title/update/", {"value": "v3"})
    assert site.reads(site.setting, 2) == [("v3", False)] * 2
    assert {r.name for r in errors(logged)} == {"syncache"}, (
        "no on-commit callback failed"
    )


def test_an_outage_is_logged_once(
    isolated: Backend, site: Site, logged: pytest.LogCaptureFixture
) -> None:
    """At most one record per ``LOG_INTERVAL`` (60 s by default): a down
    server must not write an error per request."""
    assert isolated.server is not None
    _up_and_cached(site, "/root/old/", "v1")
    isolated.server.stop()
    for _ in range(5):
        site.reads(site.url, 1)
        site.reads(site.setting, 1)
    site.post(f"/page/{site.page.pk}/slug/", {"slug": "down"})
    site.post("/setting/title/save/", {"value": "v2"})
    site.post("/setting/title/update/", {"value": "v3"})
    records = [r for r in logged.records if r.levelno >= logging.WARNING]
    messages = [f"{r.levelname}: {r.getMessage()[:150]}" for r in records]
    assert len(messages) == 1, "\n".join(messages)


@pytest.mark.parametrize("isolated", ["redis"], indirect=True)
def test_requests_after_the_server_is_back(
    isolated: Backend, site: Site, logged: pytest.LogCaptureFixture
) -> None:
    assert isolated.server is not None
    _up_and_cached(site, "/root/old/", "v1")
    isolated.server.stop()
    assert site.reads(site.url, 2) == [("/root/old/", False)] * 2
    site.post(f"/page/{site.page.pk}/slug/", {"slug": "down"})
    assert site.reads(site.url, 1) == [("/root/down/", False)]
    failed = len(errors(logged))

    isolated.server.restart()  # empty: every generation key is gone
    assert site.reads(site.url) == [
        ("/root/down/", False),
        ("/root/down/", True),
        ("/root/down/", True),
    ], "cached again once the server is back"
    assert site.reads(site.setting, 2) == [("v1", False), ("v1", True)]
    # Invalidation works again: through the views...
    site.post(f"/page/{site.root.pk}/slug/", {"slug": "top"})
    assert site.reads(site.url, 2) == [("/top/down/", False), ("/top/down/", True)]
    site.post("/setting/title/update/", {"value": "v4"})
    assert site.reads(site.setting, 2) == [("v4", False), ("v4", True)]
    # ... and from another process (what its clear() writes).
    PageTree.objects.filter(pk=site.page.pk).update(slug="elsewhere")
    GenerationSynchronizer(
        PageTree._url_cache.cache_key, normalize_cache_key=False
    ).mark_updated()
    assert site.reads(site.url, 2) == [
        ("/top/elsewhere/", False),
        ("/top/elsewhere/", True),
    ]
    assert len(errors(logged)) == failed, "no new error once the server is back"


@pytest.mark.parametrize("backend", ["sqlite", "redis", "memcached"], indirect=True)
def test_cached_again_after_the_cache_was_flushed(backend: Backend, site: Site) -> None:
    """What a restarted server looks like without the outage: every key gone
    (``cache.clear()``). The next request recomputes; the ones after it are
    served from the process's cache again."""
    _up_and_cached(site, "/root/old/", "v1")
    caches["default"].clear()
    assert site.reads(site.url) == [
        ("/root/old/", False),
        ("/root/old/", True),
        ("/root/old/", True),
    ]
