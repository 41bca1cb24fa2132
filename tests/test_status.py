"""The status page (syncache.views), its report (syncache.status), the held
locks registry (syncache.dogpile.held_mutexes) and the debug-toolbar panel
(syncache.panels).

The page is served by ``tests.urls`` under ``/admin/syncache/`` through the
Django test client (and its async twin for ASGI), with real users in the
test database and the backend fixtures' real caches. The browser test is in
``tests/browser/``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth.models import AbstractUser
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client
from django.urls import include, path, reverse

from syncache import (
    CacheMutex,
    GenerationSynchronizer,
    LocalSyncCache,
    cache_page_against_model,
    cache_tagged_page,
)
from syncache.dogpile import held_mutexes
from syncache.groups import get_view_name
from syncache.medium import get_medium
from syncache.status import group_rows, process_report
from tests.harness.backends import Backend
from tests.harness.workers import PROJECT_ROOT

URL = "/admin/syncache/"
SUBPROCESS_TIMEOUT = 60

MakeCache = Callable[..., LocalSyncCache]

#: A tag no other test module uses: its group is listed by every page.
TAG = f"status-{secrets.token_hex(4)}"


@cache_tagged_page(TAG)
def tagged_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("tagged")


@cache_page_against_model("tests.PageTree")
def per_page_view(request: HttpRequest, pk: int) -> HttpResponse:
    return HttpResponse(str(pk))


# -- helpers ------------------------------------------------------------------


def unique(name: str) -> str:
    return f"status-{name}-{secrets.token_hex(4)}"


def _user(model: type[AbstractUser], name: str, **flags: bool) -> AbstractUser:
    return model.objects.create_user(name, password="pw-" + name, **flags)


@pytest.fixture
def staff(db: None, django_user_model: type[AbstractUser]) -> AbstractUser:
    return _user(django_user_model, "staff", is_staff=True)


@pytest.fixture
def staff_client(staff: AbstractUser) -> Client:
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def user_client(db: None, django_user_model: type[AbstractUser]) -> Client:
    client = Client()
    client.force_login(_user(django_user_model, "visitor"))
    return client


class Page(HTMLParser):
    """The rows (``data-kind``/``data-name``/``data-alias``) and their
    ``data-field`` cells, the messages and the forms' CSRF tokens."""

    def __init__(self, html: str) -> None:
        super().__init__()
        #: The first row of each (kind, name, alias); every row in order.
        self.rows: dict[tuple[str, str, str], dict[str, str]] = {}
        self.row_list: list[tuple[tuple[str, str, str], dict[str, str]]] = []
        self.buttons: set[tuple[str, str, str]] = set()
        self.messages: list[tuple[str, str]] = []
        self.csrf_tokens: list[str] = []
        self.fields: dict[str, str] = {}
        self._row: tuple[str, str, str] | None = None
        self._field: str | None = None
        self._message: str | None = None
        self._in_messages = False
        self._text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        if tag == "tr" and "data-kind" in found:
            self._row = (found["data-kind"], found["data-name"], found["data-alias"])
            self.row_list.append((self._row, {}))
            self.rows.setdefault(self._row, self.row_list[-1][1])
        elif "data-field" in found:
            self._field = found["data-field"]
            self._text = []
        elif tag == "ul" and "messagelist" in found.get("class", ""):
            self._in_messages = True
        elif tag == "li" and self._in_messages:
            self._message = found.get("class", "")
            self._text = []
        elif tag == "input" and found.get("name") == "csrfmiddlewaretoken":
            self.csrf_tokens.append(found["value"])
        elif tag == "input" and found.get("type") == "submit" and self._row:
            self.buttons.add(self._row)

    def handle_data(self, data: str) -> None:
        self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        text = " ".join("".join(self._text).split())
        if tag in ("td", "strong", "span") and self._field is not None:
            if self._row is not None and tag == "td":
                self.row_list[-1][1][self._field] = text
            elif self._row is None:
                self.fields[self._field] = text
            self._field = None
        elif tag == "tr":
            self._row = None
        elif tag == "li" and self._message is not None:
            self.messages.append((self._message, text))
            self._message = None
        elif tag == "ul":
            self._in_messages = False


def page(client: Client) -> Page:
    response = client.get(URL)
    assert response.status_code == 200, response
    assert [t.name for t in response.templates][:1] == ["syncache/status.html"]
    return Page(response.content.decode())


def post(client: Client, kind: str, name: str, alias: str = "default") -> Page:
    """POST a button's form; follow the redirect back to the page."""
    response = client.post(URL, {"kind": kind, "name": name, "alias": alias})
    assert response.status_code == 302, response
    assert response["Location"] == URL
    return page(client)


def stored(key: str) -> Any:
    return get_medium().get(key)


def tag_key() -> str:
    [row] = [r for r in group_rows() if get_view_name(tagged_view) in r["views"]]
    key: str = row["local_key"]
    return key


# -- access -------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_the_admin_login(
    db: None, make_cache: MakeCache
) -> None:
    cache = make_cache()
    cache["a"] = 1
    client = Client()
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('admin:login')}?next={URL}"
    response = client.post(URL, {"kind": "local", "name": cache.id, "alias": "default"})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    assert (dict(cache), cache.own_clear_counter) == ({"a": 1}, 0)


def test_users_who_are_not_staff_are_denied(
    user_client: Client, make_cache: MakeCache
) -> None:
    cache = make_cache()
    cache["a"] = 1
    response = user_client.get(URL)
    assert response.status_code == 403
    assert cache.id not in response.content.decode()
    response = user_client.post(
        URL, {"kind": "local", "name": cache.id, "alias": "default"}
    )
    assert response.status_code == 403
    assert (dict(cache), cache.own_clear_counter) == ({"a": 1}, 0)


def test_a_post_without_the_csrf_token_is_rejected(
    staff: AbstractUser, make_cache: MakeCache
) -> None:
    cache = make_cache()
    cache["a"] = 1
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    shown = page(client)
    form = {"kind": "local", "name": cache.id, "alias": "default"}

    response = client.post(URL, form)

    assert response.status_code == 403
    assert "CSRF" in response.content.decode()
    assert (dict(cache), cache.own_clear_counter) == ({"a": 1}, 0)
    # The page's own form carries the token, and passes.
    token = shown.csrf_tokens[0]
    response = client.post(URL, {**form, "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert (dict(cache), cache.own_clear_counter) == ({}, 1)


# -- what the page shows --------------------------------------------------------


def test_staff_see_caches_synchronizers_groups_and_locks(
    lock_backend: Backend, staff_client: Client, make_cache: MakeCache
) -> None:
    cache = make_cache()
    cache.update(a=1, b=2)
    key = unique("sync")
    holder = GenerationSynchronizer(key)
    mutex = CacheMutex(unique("lock"))
    assert mutex.acquire()
    try:
        shown = page(staff_client)
        owner, fence = mutex._token, mutex.fencing_token
    finally:
        mutex.release()

    assert shown.fields["pid"] == str(os.getpid())
    local_row = shown.rows[("local", cache.id, "default")]
    # Checked by the middleware at the start of the page's request.
    assert re.fullmatch(r"\d+\.\d s ago", local_row.pop("last_checked"))
    assert local_row == {
        "id": cache.id,
        "generation": str(stored(cache.cache_key)),
        "sync_gen": str(cache.sync_gen),
        "state": "current",
        "length": "2",
        "size": str(sys.getsizeof(cache)),
        "request_counter": str(cache.request_counter),
        "own_clear_counter": "0",
        "ext_clear_counter": "0",
        "stale_clear_counter": "0",
        "last_cleared": "never",
        "alias": "default",
    }
    sync_row = shown.rows[("synchronizer", holder.cache_key, "default")]
    assert sync_row["generation"] == str(stored(holder.cache_key))
    assert (sync_row["sync_gen"], sync_row["state"]) == (
        str(holder.sync_gen),
        "current",
    )
    # A LocalSyncCache's own synchronizer is not listed again.
    assert ("synchronizer", cache.cache_key, "default") not in shown.rows
    group = shown.rows[("group", tag_key(), "default")]
    assert group["group"] == f"tag {TAG!r}"
    assert group["version"] == "(missing)"  # no page cached yet: not created
    # Groups per keywords have no key: several such rows share ("group", "",
    # alias), so read them from the list of rows.
    per_page = [r for k, r in shown.row_list if k[0] == "group" and not k[1]]
    assert {r["views"] for r in per_page} >= {get_view_name(per_page_view)}
    assert ("group", "", "default") not in shown.buttons
    lock = shown.rows[("lock", mutex.lock_key, "default")]
    assert lock["owner"] == owner
    assert lock["thread"] == threading.current_thread().name
    assert lock["fencing_token"] == str(fence)
    assert lock["timeout"] == "30 s"
    assert {
        ("local", cache.id, "default"),
        ("synchronizer", holder.cache_key, "default"),
    } <= shown.buttons
    # Released: gone.
    assert ("lock", mutex.lock_key, "default") not in page(staff_client).rows


def test_the_page_is_an_admin_page(staff_client: Client) -> None:
    response = staff_client.get(URL)
    html = response.content.decode()
    assert response.status_code == 200
    assert 'href="/admin/"' in html  # the breadcrumbs and the header
    assert "<h1>syncache status</h1>" in html
    assert "no-cache" in response["Cache-Control"]


# -- actions ----------------------------------------------------------------------


def test_clear_and_bump_change_the_counters_and_generations(
    backend: Backend, staff_client: Client, make_cache: MakeCache
) -> None:
    cache = make_cache()
    cache.update(a=1, b=2)
    # Another instance of the id, as in another process.
    other = make_cache(cache.id, unique_ids=False)
    other["a"] = 1
    holder = GenerationSynchronizer(unique("sync"))
    versions_before = stored(tag_key())
    before = page(staff_client)
    row = before.rows[("local", cache.id, "default")]
    assert (row["length"], row["own_clear_counter"]) == ("2", "0")

    shown = post(staff_client, "local", cache.id)

    generation = stored(cache.cache_key)
    assert generation != int(row["generation"])
    assert generation == cache.sync_gen
    assert shown.messages == [
        (
            "success",
            f"Cleared LocalSyncCache {cache.id!r} (cache 'default'): new "
            f"generation {generation}. Every process empties its copy at its "
            f"next check.",
        )
    ]
    # One instance was cleared at once; the other, as in another process, by
    # the check that started the next request (the page's).
    assert (dict(cache), cache.own_clear_counter) == ({}, 1)
    assert (dict(other), other.ext_clear_counter) == ({}, 1)
    rows = [r for k, r in shown.row_list if k == ("local", cache.id, "default")]
    assert [r["generation"] for r in rows] == [str(generation)] * 2
    assert sorted(
        (r["length"], r["own_clear_counter"], r["ext_clear_counter"]) for r in rows
    ) == [("0", "0", "1"), ("0", "1", "0")]

    shown = post(staff_client, "synchronizer", holder.cache_key)

    sync_row = shown.rows[("synchronizer", holder.cache_key, "default")]
    assert holder.is_expired()
    assert sync_row["state"] == "expired"
    assert sync_row["generation"] == str(stored(holder.cache_key))
    assert [kind for kind, _ in shown.messages] == ["success"]
    assert "Every holder, in every process, is now expired" in shown.messages[0][1]

    shown = post(staff_client, "group", tag_key())

    version = stored(tag_key())
    assert version is not None and version != versions_before
    assert shown.rows[("group", tag_key(), "default")]["version"] == str(version)
    assert shown.messages[0][0] == "success"


def test_a_failed_invalidation_says_so(
    staff_client: Client, make_cache: MakeCache, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache()
    cache["a"] = 1
    medium_class = type(get_medium())
    with mock.patch.object(medium_class, "bump", side_effect=ConnectionError("down")):
        shown = post(staff_client, "local", cache.id)
    [(kind, text)] = shown.messages
    assert kind == "error"
    assert text.startswith(f"Could not invalidate LocalSyncCache {cache.id!r}")
    assert "other processes were not told" in text


def test_an_entry_this_process_does_not_know_is_refused(
    staff_client: Client, make_cache: MakeCache
) -> None:
    cache = make_cache()
    cache["a"] = 1
    for kind, name, alias in [
        ("local", unique("gone"), "default"),
        ("local", cache.id, "other-alias"),
        ("synchronizer", "not-a-key", "default"),
        ("group", "not-a-group", "default"),
    ]:
        shown = post(staff_client, kind, name, alias)
        [(level, text)] = shown.messages
        assert level == "error"
        assert f"is not registered in process {os.getpid()}" in text
        assert repr(name) in text
    assert (dict(cache), cache.own_clear_counter) == ({"a": 1}, 0)


@pytest.mark.parametrize(
    "form",
    [{}, {"kind": "nuke", "name": "x", "alias": "default"}, {"kind": "local"}],
)
def test_a_malformed_post_is_a_bad_request(
    staff_client: Client, form: dict[str, str]
) -> None:
    response = staff_client.post(URL, form)
    assert response.status_code == 400
    assert "needs kind (one of local, synchronizer, group)" in response.content.decode()


def test_the_page_under_asgi(
    backend: Backend,
    transactional_db: None,
    staff: AbstractUser,
    make_cache: MakeCache,
) -> None:
    """Through the ASGI handler the view runs in a thread: a database cache
    (which may not be used from the event loop) works. The database is
    committed (transactional_db): that thread has its own connection."""
    cache = make_cache()
    cache["a"] = 1
    client = AsyncClient()
    client.force_login(staff)

    async def get() -> str:
        response = await client.get(URL)
        assert response.status_code == 200
        return response.content.decode()

    row = Page(asyncio.run(get())).rows[("local", cache.id, "default")]
    # Read, not "(unreadable)": the failure policy would hide an error.
    assert row["generation"] == str(stored(cache.cache_key))


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_clear_under_asgi(
    backend: Backend,
    transactional_db: None,
    staff: AbstractUser,
    make_cache: MakeCache,
) -> None:
    cache = make_cache()
    cache["a"] = 1
    client = AsyncClient()
    client.force_login(staff)

    async def clear() -> int:
        response = await client.post(
            URL, {"kind": "local", "name": cache.id, "alias": "default"}
        )
        return response.status_code

    assert asyncio.run(clear()) == 302
    assert (dict(cache), cache.own_clear_counter) == ({}, 1)


# -- the report and the held locks --------------------------------------------------


def test_the_report_is_json_ready(lock_backend: Backend, make_cache: MakeCache) -> None:
    cache = make_cache()
    cache["a"] = object()  # the values are never part of the report
    with CacheMutex(unique("lock")):
        report = process_report()
    assert json.loads(json.dumps(report)) == report
    assert {"local_caches", "synchronizers", "groups", "locks", "pid"} <= set(report)


def test_held_mutexes_lists_the_holders_of_this_process(lock_backend: Backend) -> None:
    mutex = CacheMutex(unique("lock"), timeout=7)
    acquired = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with mutex:
            acquired.set()
            release.wait(30)

    worker = threading.Thread(target=hold, name="holder-thread")
    worker.start()
    try:
        assert acquired.wait(30)
        [held] = [h for h in held_mutexes() if h.mutex is mutex]
    finally:
        release.set()
        worker.join(30)
    assert held.thread == "holder-thread"
    assert held.lock_key == mutex.lock_key
    assert held.owner is not None and not held.degraded
    assert held.timeout == 7
    assert held.held_for >= 0
    assert held.fencing_token is not None
    assert all(h.mutex is not mutex for h in held_mutexes())


def test_held_mutexes_shows_a_degraded_hold(lock_backend: Backend) -> None:
    mutex = CacheMutex(unique("lock"))
    medium_class = type(get_medium())
    with mock.patch.object(
        medium_class, "lock_take", side_effect=ConnectionError("down")
    ):
        assert mutex.acquire()
    try:
        [held] = [h for h in held_mutexes() if h.mutex is mutex]
        assert (held.degraded, held.owner, held.fencing_token) == (True, None, None)
    finally:
        mutex.release()


def test_a_forgotten_mutex_leaves_the_registry(lock_backend: Backend) -> None:
    mutex = CacheMutex(unique("lock"), timeout=2)
    assert mutex.acquire()
    lock_key = mutex.lock_key
    del mutex
    gc.collect()
    assert all(h.lock_key != lock_key for h in held_mutexes())


# -- the debug toolbar panel ------------------------------------------------------


def show_toolbar(request: HttpRequest) -> bool:
    return True


@pytest.fixture
def toolbar(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """django-debug-toolbar with the syncache panel only, on this test's
    URLconf: the tests' URLs plus the toolbar's (importable only once the
    toolbar is an installed app)."""
    settings.INSTALLED_APPS = [*settings.INSTALLED_APPS, "debug_toolbar"]
    import debug_toolbar.toolbar

    settings.MIDDLEWARE = [
        *settings.MIDDLEWARE,
        "debug_toolbar.middleware.DebugToolbarMiddleware",
    ]
    settings.DEBUG_TOOLBAR_PANELS = ["syncache.panels.SyncachePanel"]
    settings.DEBUG_TOOLBAR_CONFIG = {
        "SHOW_TOOLBAR_CALLBACK": f"{__name__}.show_toolbar",
        "IS_RUNNING_TESTS": False,
    }
    from tests import urls

    module = types.ModuleType(f"{__name__}_toolbar_urls")
    module.urlpatterns = [  # type: ignore[attr-defined]
        path("__debug__/", include("debug_toolbar.urls")),
        *urls.urlpatterns,
    ]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    settings.ROOT_URLCONF = module.__name__
    debug_toolbar.toolbar.DebugToolbar._panel_classes = None
    yield
    debug_toolbar.toolbar.DebugToolbar._panel_classes = None


def _panel_content(html: str, get: Callable[[str], Any]) -> str:
    [request_id] = re.findall(r'data-request-id="([0-9a-f]+)"', html)
    response = get(
        f"/__debug__/render_panel/?request_id={request_id}&panel_id=SyncachePanel"
    )
    assert response.status_code == 200
    content: str = response.json()["content"]
    return content


@pytest.mark.usefixtures("toolbar")
def test_the_toolbar_panel_renders(
    backend: Backend, staff_client: Client, make_cache: MakeCache
) -> None:
    cache = make_cache()
    cache["a"] = 1
    response = staff_client.get(URL)
    html = response.content.decode()
    assert "SyncachePanel" in html

    content = _panel_content(html, staff_client.get)

    rows = Page(content).rows
    assert rows[("local", cache.id, "default")]["length"] == "1"
    assert f'href="{URL}"' in content  # to the page, for the buttons
    assert "csrfmiddlewaretoken" not in content


@pytest.mark.usefixtures("toolbar")
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_toolbar_panel_under_asgi(
    backend: Backend,
    transactional_db: None,
    staff: AbstractUser,
    make_cache: MakeCache,
) -> None:
    """The panel gathers its report in a thread: the database cache is not
    used from the event loop."""
    cache = make_cache()
    cache["a"] = 1
    client = AsyncClient()
    client.force_login(staff)

    async def get(url: str) -> Any:
        return await client.get(url)

    response = asyncio.run(get(URL))
    assert response.status_code == 200
    content = _panel_content(response.content.decode(), lambda u: asyncio.run(get(u)))
    row = Page(content).rows[("local", cache.id, "default")]
    # Read, not "(unreadable)": the failure policy would hide an error.
    assert row["generation"] == str(stored(cache.cache_key))


_WITHOUT_TOOLBAR = """
import sys
sys.modules["debug_toolbar"] = None
sys.modules["debug_toolbar.panels"] = None
import django
django.setup()
from django.core.exceptions import ImproperlyConfigured
import syncache.panels
try:
    syncache.panels.SyncachePanel(None, None)
except ImproperlyConfigured as exc:
    print(exc)
"""


def test_the_panel_module_imports_without_the_toolbar() -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PYTHONPATH": PROJECT_ROOT,
    }
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TOOLBAR],
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "pip install django-debug-toolbar" in result.stdout


def test_the_command_and_the_page_share_the_report(
    staff_client: Client, make_cache: MakeCache
) -> None:
    from io import StringIO

    from django.core.management import call_command

    cache = make_cache()
    cache["a"] = 1
    out = StringIO()
    call_command("syncache", "status", "--json", stdout=out)
    [row] = [
        r for r in json.loads(out.getvalue())["local_caches"] if r["id"] == cache.id
    ]
    shown = page(staff_client).rows[("local", cache.id, "default")]
    assert shown["generation"] == str(row["generation"])
    assert shown["length"] == str(row["length"])


def test_the_admin_sites_own_permission_rule_applies(staff: AbstractUser) -> None:
    """A site stricter than "active staff" (superusers only, a second
    factor...) keeps its rule on the status page."""
    from django.contrib.admin import AdminSite
    from django.contrib.sessions.backends.db import SessionStore
    from django.test import RequestFactory

    from syncache.views import StatusView

    class SuperusersOnly(AdminSite):
        def has_permission(self, request: HttpRequest) -> bool:
            return bool(request.user.is_active and request.user.is_superuser)

    view = StatusView.as_view(admin_site=SuperusersOnly(name="strict"))
    request = RequestFactory().get("/strict/syncache/")
    request.user = staff
    request.session = SessionStore()
    with pytest.raises(PermissionDenied):
        view(request)
    staff.is_superuser = True
    assert view(request).status_code == 200
