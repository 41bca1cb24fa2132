"""Generational groups (syncache.groups): group forms and keys, the object
API, the page cache and its model hooks, on every backend.

The module is also the URLconf of :func:`uncache_from_path` tests
(``urlconf="tests.test_groups"``).
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import hashlib
import itertools
import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.contrib.auth.models import Group as AuthGroup
from django.contrib.auth.models import Permission
from django.core.cache.backends.base import memcache_key_warnings
from django.db import connections, models, transaction
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.test import RequestFactory
from django.urls import path, re_path
from django.utils.cache import get_cache_key
from django.views import View

import syncache.medium
from syncache import (
    Group,
    GroupError,
    GroupKeyError,
    NotGroupCachedError,
    cache_page_against_model,
    cache_page_against_models,
    cache_tagged_page,
    cache_versioned_page,
    uncache,
    uncache_from_path,
    uncache_from_tag,
)
from syncache.groups import (
    _page_prefix,
    bump_local_prefix,
    bump_local_prefix_on_commit,
    get_local_key,
    get_local_key_from_mapping,
    get_local_key_mapping,
    get_local_prefix,
    get_view_name,
)
from syncache.medium import get_medium
from tests.harness.backends import Backend

URLCONF = "tests.test_groups"

# -- views --------------------------------------------------------------------

_tokens = itertools.count()
_calls: Counter[str] = Counter()
_calls_lock = threading.Lock()


def _render(view: str, **keywords: Any) -> HttpResponse:
    """A page that says which view and keywords made it, with a token unique
    to this rendering: a cached page repeats the token."""
    with _calls_lock:
        _calls[view] += 1
    body = {"view": view, "keywords": keywords, "token": next(_tokens)}
    return HttpResponse(json.dumps(body, default=str), content_type="application/json")


@cache_versioned_page(["category"])
def item_page(request: HttpRequest, category: Any, item: Any) -> HttpResponse:
    return _render("item", category=category, item=item)


@cache_versioned_page()
def positional_page(request: HttpRequest, pk: Any, fmt: str = "html") -> HttpResponse:
    return _render("positional", pk=pk, fmt=fmt)


@cache_versioned_page()
def star_args_page(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    return _render("star", args=args, **kwargs)


@cache_versioned_page("constant")
def star_args_constant_page(request: HttpRequest, *args: Any) -> HttpResponse:
    return _render("star-constant", args=args)


@cache_tagged_page("news")
def news_page(request: HttpRequest, section: str) -> HttpResponse:
    return _render("news", section=section)


@cache_tagged_page("news")
def news_archive(request: HttpRequest) -> HttpResponse:
    return _render("news-archive")


def plain_view(request: HttpRequest) -> HttpResponse:
    return _render("plain")


@cache_versioned_page()
def responding_page(request: HttpRequest, kind: str) -> HttpResponseBase:
    """Answers that must not be stored, by ``kind``."""
    rendered = _render("responding", kind=kind)
    if kind == "not-found":
        return HttpResponse(rendered.content, status=404)
    if kind == "streaming":
        return StreamingHttpResponse(iter([rendered.content]))
    if kind == "max-age-0":
        rendered["Cache-Control"] = "max-age=0"
    elif kind == "vary-star":
        rendered["Vary"] = "*"
    else:
        rendered["Cache-Control"] = kind
    return rendered


class _Template:
    """The least a TemplateResponse needs from a template."""

    def __init__(self, view: str) -> None:
        self.view = view

    def render(self, context: Any = None, request: Any = None) -> str:
        return _render(self.view, **(context or {})).content.decode()


@cache_versioned_page()
def template_page(request: HttpRequest, pk: int) -> TemplateResponse:
    return TemplateResponse(request, _Template("template"), {"pk": pk})  # type: ignore[arg-type]


class ItemView(View):
    def get(self, request: HttpRequest, pk: int) -> HttpResponse:
        return _render("class-based", pk=pk)


class_based_page = cache_versioned_page()(ItemView.as_view())


@cache_versioned_page()
async def async_page(request: HttpRequest, pk: int) -> HttpResponse:
    return _render("async", pk=pk)


@cache_page_against_model(AuthGroup)
def auth_group_page(request: HttpRequest, pk: Any) -> HttpResponse:
    group = AuthGroup.objects.filter(pk=pk).first()
    permissions = (
        sorted(group.permissions.values_list("codename", flat=True)) if group else []
    )
    return _render("auth-group", name=group and group.name, permissions=permissions)


@cache_page_against_model("auth.Group", to_fields={"name": "slug"})
def auth_group_by_name(request: HttpRequest, slug: str) -> HttpResponse:
    return _render(
        "auth-group-by-name", exists=AuthGroup.objects.filter(name=slug).exists()
    )


@cache_page_against_models(AuthGroup, "auth.Permission")
def auth_group_list(request: HttpRequest) -> HttpResponse:
    return _render(
        "auth-group-list",
        names=sorted(AuthGroup.objects.values_list("name", flat=True)),
    )


urlpatterns = [
    path("items/<int:category>/<int:item>/", item_page),
    re_path(r"^positional/(\d+)/$", positional_page),
    re_path(r"^star/(\d+)/$", star_args_page),
    path("class-based/<int:pk>/", class_based_page),
    path("plain/", plain_view),
]


# -- helpers ------------------------------------------------------------------


def call(
    view: Callable[..., Any], url: str, *args: Any, method: str = "get", **kwargs: Any
) -> Any:
    """Request ``url`` from ``view``; return the response, rendered."""
    request = getattr(RequestFactory(), method)(url)
    response = view(request, *args, **kwargs)
    if asyncio.iscoroutine(response):
        response = asyncio.run(response)
    if hasattr(response, "render"):
        response.render()
    return response


def page(
    view: Callable[..., Any], url: str, *args: Any, **kwargs: Any
) -> dict[str, Any]:
    """The JSON body of a 200 answer from ``view``."""
    response = call(view, url, *args, **kwargs)
    assert response.status_code == 200, response
    body: dict[str, Any] = json.loads(response.content)
    return body


def token(view: Callable[..., Any], url: str, *args: Any, **kwargs: Any) -> int:
    return int(page(view, url, *args, **kwargs)["token"])


def is_cached(view: Callable[..., Any], url: str, *args: Any, **kwargs: Any) -> bool:
    """Whether two requests in a row get the same page (the second a hit)."""
    return token(view, url, *args, **kwargs) == token(view, url, *args, **kwargs)


@pytest.fixture
def calls() -> Iterator[Counter[str]]:
    """Renderings per view during the test."""
    with _calls_lock:
        _calls.clear()
    yield _calls


# -- group forms --------------------------------------------------------------


KEYWORDS = {"category": "3", "item": "7", "fmt": "atom"}


def test_group_none_is_every_view_keyword() -> None:
    assert get_local_key_mapping(None, KEYWORDS) == KEYWORDS
    assert get_local_key(None, KEYWORDS) == get_local_key_from_mapping(KEYWORDS)


def test_group_string_is_a_tag_whatever_the_keywords() -> None:
    assert get_local_key_mapping("feeds", KEYWORDS) == {"group": "feeds"}
    assert get_local_key("feeds", KEYWORDS) == get_local_key("feeds", {})


def test_group_callable_returns_the_mapping() -> None:
    def by_category(category: str, **rest: Any) -> dict[str, Any]:
        return {"category": int(category)}

    assert get_local_key_mapping(by_category, KEYWORDS) == {"category": 3}
    assert get_local_key(by_category, KEYWORDS) == get_local_key(["category"], KEYWORDS)


def test_group_callable_must_return_a_mapping() -> None:
    with pytest.raises(TypeError, match=r"must return a mapping.*returned a list"):
        get_local_key_mapping(lambda **kw: [1], KEYWORDS)


def test_group_dict_remaps_new_names_to_view_keywords() -> None:
    assert get_local_key_mapping({"kind": "fmt"}, KEYWORDS) == {"kind": "atom"}
    assert get_local_key({"kind": "fmt"}, KEYWORDS) == get_local_key(
        None, {"kind": "atom"}
    )


def test_group_sequence_keeps_only_those_keywords() -> None:
    assert get_local_key_mapping(("category", "fmt"), KEYWORDS) == {
        "category": "3",
        "fmt": "atom",
    }
    other_item = {**KEYWORDS, "item": "8"}
    assert get_local_key(["category"], KEYWORDS) == get_local_key(
        ["category"], other_item
    )
    assert get_local_key(None, KEYWORDS) != get_local_key(None, other_item)


@pytest.mark.parametrize("group", [["category", "page"], {"n": "page"}])
def test_missing_view_keyword_is_a_clear_key_error(group: Any) -> None:
    with pytest.raises(GroupKeyError) as raised:
        get_local_key(group, KEYWORDS)
    error = raised.value
    assert isinstance(error, KeyError)
    assert isinstance(error, GroupError)
    message = str(error)
    assert "'page'" in message, "names the keyword"
    assert repr(group) in message, "names the group"
    assert "'category', 'fmt', 'item'" in message, "lists the keywords available"


def test_unsupported_group_form() -> None:
    with pytest.raises(TypeError, match="not int"):
        get_local_key(42, KEYWORDS)  # type: ignore[arg-type]


def test_view_name_and_vary_on_view() -> None:
    assert get_view_name(plain_view) == "tests.test_groups.plain_view"
    assert get_view_name(item_page) == "tests.test_groups.item_page"
    assert get_view_name(class_based_page) == "tests.test_groups.ItemView"
    with_view = get_local_key(None, KEYWORDS, "a.view")
    assert with_view != get_local_key(None, KEYWORDS, "b.view")
    assert with_view != get_local_key(None, KEYWORDS)


def test_key_prefix(settings: Any) -> None:
    assert get_local_key(None, KEYWORDS, key_prefix="site") != get_local_key(
        None, KEYWORDS
    )
    settings.CACHE_MIDDLEWARE_KEY_PREFIX = "site"
    assert get_local_key(None, KEYWORDS, key_prefix="site") == get_local_key(
        None, KEYWORDS
    )


# -- normalisation and hashing ------------------------------------------------


class Size(models.IntegerChoices):
    ONE = 1


def test_url_text_number_and_model_instance_address_one_group() -> None:
    keys = {
        get_local_key_from_mapping({"pk": value}, "v")
        for value in ("1", 1, AuthGroup(pk=1), Permission(pk=1), Size.ONE)
    }
    assert len(keys) == 1
    assert get_local_key_from_mapping({"pk": 2}, "v") not in keys


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (uuid.UUID(int=5), "00000000-0000-0000-0000-000000000005"),
        (decimal.Decimal("1.50"), "1.50"),
        (datetime.date(2024, 5, 1), "2024-05-01"),
        (
            datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc),
            "2024-05-01 12:00:00+00:00",
        ),
        (None, "None"),
        (True, "True"),
        (False, "False"),
        (-3, "-3"),
    ],
)
def test_supported_types_hash_as_their_text(value: Any, text: str) -> None:
    assert get_local_key_from_mapping({"k": value}) == get_local_key_from_mapping(
        {"k": text}
    )


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        ([1], "list"),
        ({"a": 1}, "dict"),
        (object(), "object"),
        (1.5, "float"),
        (b"1", "bytes"),
    ],
)
def test_unsupported_types_are_refused_by_name(value: Any, type_name: str) -> None:
    with pytest.raises(TypeError, match=f"keyword 'thing' is a {type_name}"):
        get_local_key_from_mapping({"thing": value})
    with pytest.raises(TypeError, match=f"keyword 'thing' is a {type_name}"):
        Group("g", thing=value)


def test_unsaved_instance_and_non_text_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unsaved Group"):
        get_local_key_from_mapping({"group": AuthGroup()})
    with pytest.raises(TypeError, match="names must be strings"):
        get_local_key(lambda **kw: {1: "a"}, {})


def test_hash_is_sha256_of_canonical_json() -> None:
    """The digest is documented (and pinned) so that another process, another
    Python or another release addresses the same groups."""
    text = json.dumps([[["a", "1"], ["b", "x"]], "v.view"], separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()
    key = get_local_key_from_mapping({"b": "x", "a": 1}, "v.view", key_prefix="p")
    assert key == f"syncache!group:p:{digest}"
    assert digest == "c99599253a3671015b49e3eead627dffc1dcfcb27ffb2aef9a5d32c07dc63e7e"


def test_local_keys_fit_memcached_whatever_the_prefix() -> None:
    key = get_local_key(None, {"x" * 300: "y" * 300}, "v" * 300, key_prefix="p" * 300)
    assert len(key) <= 200
    assert not list(memcache_key_warnings(key))


# -- versions and the object API (every backend) ------------------------------


@pytest.mark.usefixtures("backend")
def test_local_prefix_is_stable_until_bumped() -> None:
    local_key = get_local_key("prefix-test", {})
    prefix = get_local_prefix(local_key)
    assert prefix.startswith("local.") and prefix.endswith(".")
    assert get_local_prefix(local_key) == prefix
    assert get_local_prefix(local_key, key_prefix="site").startswith("site.local.")
    bump_local_prefix(local_key)
    bumped = get_local_prefix(local_key)
    assert bumped != prefix
    assert get_local_prefix(local_key) == bumped


@pytest.mark.usefixtures("backend")
def test_bump_invalidates_every_entry_of_the_group_and_no_other() -> None:
    catalog = Group("catalog", category=3)
    same = Group("catalog", category="3")
    other = Group("catalog", category=4)
    assert same.local_key == catalog.local_key
    for group in (catalog, other):
        group.set("list", f"list of {group.keywords}")
        group.set("count", 2)
    keys = {name: catalog.key(name) for name in ("list", "count")}
    other_key = other.key("list")
    assert same.get("list") == "list of {'category': 3}"

    same.bump()

    assert catalog.get("list") is None
    assert catalog.get("count", "missing") == "missing"
    assert {name: catalog.key(name) for name in keys} != keys
    assert other.get("list") == "list of {'category': 4}"
    assert other.get("count") == 2
    assert other.key("list") == other_key


@pytest.mark.usefixtures("backend")
def test_get_or_set_and_stored_none() -> None:
    group = Group("get-or-set")
    computed = []

    def compute() -> str | None:
        computed.append(1)
        return None

    assert group.get_or_set("v", compute) is None
    assert group.get_or_set("v", compute) is None
    assert computed == [1], "a stored None is a hit"
    assert group.get_or_set("w", "plain value") == "plain value"
    assert group.get("w") == "plain value"


@pytest.mark.usefixtures("backend")
def test_value_computed_across_a_bump_is_never_served() -> None:
    """get_or_set stores under the version read before computing: a bump made
    while computing (by another process) makes the value a miss."""
    group = Group("stale-write")

    def compute_while_bumped() -> str:
        Group("stale-write").bump()
        return "computed from old data"

    assert group.get_or_set("v", compute_while_bumped) == "computed from old data"
    assert group.get("v") is None
    assert group.get_or_set("v", lambda: "fresh") == "fresh"
    assert group.get("v") == "fresh"
    version = group.version()
    Group("stale-write").bump()
    group.set("w", "old", version=version)
    assert group.get("w") is None


def test_versions_reads_many_groups_in_one_round_trip(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    groups = [Group("many", n=n) for n in range(50)]
    groups[0].bump()
    expected = [group.version() for group in groups[:10]]
    medium = get_medium()
    reads: list[int] = []
    real_get_many = medium.get_many

    def counting_get_many(keys: Any) -> Any:
        reads.append(len(keys))
        return real_get_many(keys)

    with monkeypatch.context() as patched:
        patched.setattr(medium, "get_many", counting_get_many)
        patched.setattr(medium, "get", lambda key: pytest.fail("one get_many only"))
        versions = Group.versions(groups)
    assert reads == [50]
    assert versions[:10] == expected
    assert len(set(versions)) == 50
    assert Group.versions(groups) == versions, "the missing ones were created"
    assert groups[3].key("x", version=versions[3]) == groups[3].key("x")


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("backend")
def test_bump_on_commit_once_and_never_on_rollback() -> None:
    group = Group("on-commit")
    version = group.version()
    with transaction.atomic():
        group.bump_on_commit()
        bump_local_prefix_on_commit(group.local_key)
        assert group.version() == version
    bumped = group.version()
    assert bumped != version
    with pytest.raises(RuntimeError), transaction.atomic():
        group.bump_on_commit()
        raise RuntimeError
    assert group.version() == bumped


# -- eviction: a forced collision ---------------------------------------------


def test_evicted_version_never_serves_an_old_page(backend: Backend) -> None:
    """A page key does not contain the version: after the version key is
    evicted and re-created (by any reader, in any process), the old page sits
    under exactly the key the next request reads (the collision). The
    version it carries is refused."""
    url = "/items/1/1/"
    first = token(item_page, url, category=1, item=1)
    local_key = get_local_key(["category"], {"category": 1}, get_view_name(item_page))
    request = RequestFactory().get(url)
    page_key = get_cache_key(request, _page_prefix(local_key), cache=backend.cache)
    assert page_key is not None
    old_version, old_page = backend.cache.get(page_key)
    assert json.loads(old_page.content)["token"] == first

    backend.cache.delete(local_key)  # evicted
    assert get_medium().seed(local_key) != old_version, "re-created by a reader"
    assert backend.cache.get(page_key)[0] == old_version, "the old page is still there"

    second = token(item_page, url, category=1, item=1)
    assert second != first
    new_version, new_page = backend.cache.get(page_key)
    assert new_version != old_version
    assert json.loads(new_page.content)["token"] == second
    assert token(item_page, url, category=1, item=1) == second


def test_evicted_version_never_serves_an_old_value(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Versions forced to be neighbours (41, then 42 after the eviction), as
    groupcache's small random range made likely: the entry key is reused
    under the new version, and the value carried under 41 is refused."""
    monkeypatch.setattr(syncache.medium, "new_generation", itertools.count(41).__next__)
    group = Group("evicted")
    assert group.version() == 41
    group.set("v", "old")
    old_key = group.key("v")
    assert group.get("v") == "old"

    backend.cache.delete(group.local_key)  # evicted
    assert Group("evicted").version() == 42, "re-created by another reader"

    assert group.get("v") is None
    assert group.key("v") != old_key
    assert group.get_or_set("v", lambda: "new") == "new"
    assert group.get("v") == "new"


# -- pages (every backend) ----------------------------------------------------


@pytest.mark.usefixtures("backend")
def test_bump_uncaches_every_page_of_the_group_and_no_other(
    calls: Counter[str],
) -> None:
    pages = {(c, i): f"/items/{c}/{i}/" for c in (1, 2) for i in (1, 2)}
    first = {
        key: token(item_page, url, category=key[0], item=key[1])
        for key, url in pages.items()
    }
    assert len(set(first.values())) == 4
    assert calls["item"] == 4
    again = {
        key: token(item_page, url, category=key[0], item=key[1])
        for key, url in pages.items()
    }
    assert again == first
    assert calls["item"] == 4

    uncache(get_view_name(item_page), category="1")

    after = {
        key: token(item_page, url, category=key[0], item=key[1])
        for key, url in pages.items()
    }
    assert after[1, 1] != first[1, 1] and after[1, 2] != first[1, 2]
    assert after[2, 1] == first[2, 1] and after[2, 2] == first[2, 2]


@pytest.mark.usefixtures("backend")
def test_group_object_addresses_a_views_pages() -> None:
    url = "/items/5/1/"
    first = token(item_page, url, category="5", item="1")
    Group(get_view_name(item_page), category=4).bump()
    assert token(item_page, url, category="5", item="1") == first
    Group(get_view_name(item_page), category=5).bump()
    assert token(item_page, url, category="5", item="1") != first


@pytest.mark.usefixtures("backend")
def test_uncache_from_path_and_tag() -> None:
    item = token(item_page, "/items/3/4/", category=3, item=4)
    uncache_from_path("/items/3/4/", urlconf=URLCONF)
    assert token(item_page, "/items/3/4/", category=3, item=4) != item

    positional = token(positional_page, "/positional/9/", "9")
    uncache_from_path("/positional/9/", urlconf=URLCONF)
    assert token(positional_page, "/positional/9/", "9") != positional

    class_based = token(class_based_page, "/class-based/2/", pk=2)
    uncache_from_path("/class-based/2/", urlconf=URLCONF)
    assert token(class_based_page, "/class-based/2/", pk=2) != class_based

    news = token(news_page, "/news/sport/", section="sport")
    archive = token(news_archive, "/news/")
    uncache_from_tag("sports")
    assert token(news_page, "/news/sport/", section="sport") == news
    uncache_from_tag("news")
    assert token(news_page, "/news/sport/", section="sport") != news
    assert token(news_archive, "/news/") != archive


def test_uncache_a_view_that_is_not_group_cached() -> None:
    with pytest.raises(NotGroupCachedError, match="plain_view' is not a view"):
        uncache_from_path("/plain/", urlconf=URLCONF)
    with pytest.raises(NotGroupCachedError):
        uncache("tests.test_groups.no_such_view")
    with pytest.raises(ValueError):
        uncache("no.such.module.view")
    with pytest.raises(GroupKeyError, match="'category'"):
        uncache(get_view_name(item_page), item=1)


def test_page_hit_costs_one_multi_get_and_one_get(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same two round trips as Django's cache_page hit."""
    url = "/items/8/8/"
    first = token(item_page, url, category=8, item=8)
    medium = get_medium()
    cache = medium.cache
    operations: list[str] = []
    depth = threading.local()

    def record(owner: Any, name: str, label: str) -> None:
        """Record the outermost calls only: Django's default get_many is a
        loop over get, and the generic medium's get_many is the cache's."""
        real = getattr(owner, name)

        def recorded(*args: Any, **kwargs: Any) -> Any:
            level = getattr(depth, "level", 0)
            if not level:
                operations.append(label)
            depth.level = level + 1
            try:
                return real(*args, **kwargs)
            finally:
                depth.level = level

        monkeypatch.setattr(owner, name, recorded)

    for name in ("get", "get_many", "add", "set", "seed", "bump"):
        record(medium, name, f"medium.{name}")
    for name in ("get", "get_many", "set", "add", "delete"):
        record(cache, name, f"cache.{name}")
    assert token(item_page, url, category=8, item=8) == first
    assert operations == ["medium.get_many", "cache.get"]


@pytest.mark.usefixtures("backend")
def test_only_cacheable_answers_are_stored(calls: Counter[str]) -> None:
    for kind in (
        "not-found",
        "streaming",
        "private",
        "no-store",
        "no-cache",
        "max-age-0",
        "vary-star",
    ):
        url = f"/responding/{kind}/"
        call(responding_page, url, kind=kind)
        call(responding_page, url, kind=kind)
    assert calls["responding"] == 14, "every request ran the view"
    post_first = call(item_page, "/items/6/6/", category=6, item=6, method="post")
    post_second = call(item_page, "/items/6/6/", category=6, item=6, method="post")
    assert post_first.content != post_second.content, "POST is never cached"


@pytest.mark.usefixtures("backend")
def test_head_and_cache_headers() -> None:
    response = call(item_page, "/items/7/7/", category=7, item=7)
    assert "max-age=600" in response["Cache-Control"]
    assert response.has_header("Expires")
    head = call(item_page, "/items/7/7/", category=7, item=7, method="head")
    assert head.content == response.content, "HEAD gets the GET page"


@pytest.mark.usefixtures("backend")
def test_template_response_is_stored_once_rendered(calls: Counter[str]) -> None:
    first = token(template_page, "/template/1/", pk=1)
    assert token(template_page, "/template/1/", pk=1) == first
    assert calls["template"] == 1


@pytest.mark.usefixtures("backend")
def test_async_view() -> None:
    assert is_cached(async_page, "/async/1/", pk=1)


# -- positional arguments -----------------------------------------------------


@pytest.mark.usefixtures("backend")
def test_positional_arguments_are_named_from_the_signature() -> None:
    url = "/positional/4/"
    first = token(positional_page, url, "4")
    assert token(positional_page, url, pk=4) == first, "pk='4' positional is pk=4"
    uncache(get_view_name(positional_page), pk=4)
    assert token(positional_page, url, "4") != first


@pytest.mark.usefixtures("backend")
def test_unnamed_positional_arguments_are_a_clear_error() -> None:
    with pytest.raises(
        TypeError,
        match=r"star_args_page received positional arguments \('3',\)"
        r".*named URL parameters.*group",
    ):
        call(star_args_page, "/star/3/", "3")
    with pytest.raises(TypeError, match="received positional arguments"):
        uncache_from_path("/star/3/", urlconf=URLCONF)
    assert is_cached(star_args_page, "/star/?k=1", k="1"), "keywords are fine"
    assert is_cached(star_args_constant_page, "/star-constant/3/", "3"), (
        "a group that needs no keywords takes any arguments"
    )


# -- thread safety ------------------------------------------------------------


THREADS = 12
REQUESTS = 5


def test_threads_each_get_their_own_page(backend: Backend, calls: Counter[str]) -> None:
    """One decorated view, many threads with different keywords at once, four
    threads per group: every answer is the thread's own page, and from the
    second on a cache hit.

    The versions are created first: on the file cache ``add`` is not atomic,
    and two threads seeding one group at once may each render once more.
    """
    for category in range(3):
        Group(get_view_name(item_page), category=category).version()
    barrier = threading.Barrier(THREADS, timeout=30)

    def client(index: int) -> list[dict[str, Any]]:
        category, item = index % 3, index
        try:
            barrier.wait()
            return [
                page(
                    item_page,
                    f"/items/{category}/{item}/",
                    category=category,
                    item=item,
                )
                for _ in range(REQUESTS)
            ]
        finally:
            for connection in connections.all(initialized_only=True):
                connection.close()

    with ThreadPoolExecutor(THREADS) as pool:
        answers = list(pool.map(client, range(THREADS)))
    for index, bodies in enumerate(answers):
        assert {json.dumps(body["keywords"], sort_keys=True) for body in bodies} == {
            json.dumps({"category": index % 3, "item": index}, sort_keys=True)
        }
        if backend.name == "sqlite":
            # Django's DatabaseCache drops a write SQLite refuses while
            # another thread writes (DESIGN.md): a page may be rendered again.
            continue
        assert len({body["token"] for body in bodies}) == 1, "one rendering, then hits"


# -- model changes, on commit -------------------------------------------------

model_test = pytest.mark.django_db(transaction=True)


def group_page(pk: Any) -> dict[str, Any]:
    return page(auth_group_page, f"/auth-groups/{pk}/", pk=pk)


@model_test
@pytest.mark.usefixtures("backend")
def test_model_save_uncaches_on_commit_only() -> None:
    group = AuthGroup.objects.create(name="before")
    first = group_page(group.pk)
    assert first["keywords"]["name"] == "before"
    version = Group(get_view_name(auth_group_page), pk=group.pk).version()
    with transaction.atomic():
        group.name = "after"
        group.save()
        group.save()
        assert Group(get_view_name(auth_group_page), pk=group.pk).version() == version
        assert group_page(group.pk)["token"] == first["token"], "not before the commit"
    assert Group(get_view_name(auth_group_page), pk=group.pk).version() != version
    assert group_page(group.pk)["keywords"]["name"] == "after"


@model_test
@pytest.mark.usefixtures("backend")
def test_rollback_uncaches_nothing() -> None:
    group = AuthGroup.objects.create(name="kept")
    first = group_page(group.pk)
    with pytest.raises(RuntimeError), transaction.atomic():
        group.name = "rolled back"
        group.save()
        raise RuntimeError
    assert group_page(group.pk)["token"] == first["token"]


@model_test
@pytest.mark.usefixtures("backend")
def test_uncommitted_rows_are_never_stored() -> None:
    """A page rendered inside the transaction that changed its rows is not
    stored: after a rollback, which bumps nothing, it would be served."""
    group = AuthGroup.objects.create(name="committed")
    with pytest.raises(RuntimeError), transaction.atomic():
        group.name = "uncommitted"
        group.save()
        assert group_page(group.pk)["keywords"]["name"] == "uncommitted"
        raise RuntimeError
    assert group_page(group.pk)["keywords"]["name"] == "committed"
    values = Group("pending")
    with pytest.raises(RuntimeError), transaction.atomic():
        values.bump_on_commit()
        assert values.get_or_set("v", lambda: "uncommitted") == "uncommitted"
        values.set("w", "uncommitted")
        raise RuntimeError
    assert values.get("v") is None
    assert values.get("w") is None


@model_test
@pytest.mark.usefixtures("backend")
def test_url_text_matches_the_primary_key() -> None:
    """A URL keyword "12" (a regex URL) and the instance's pk 12 are one group."""
    group = AuthGroup.objects.create(name="one")
    first = group_page(str(group.pk))
    other = AuthGroup.objects.create(name="other")
    other_first = group_page(str(other.pk))
    group.save()
    assert group_page(str(group.pk))["token"] != first["token"]
    assert group_page(str(other.pk))["token"] == other_first["token"]


@model_test
@pytest.mark.usefixtures("backend")
def test_delete_and_m2m_changes_from_both_sides() -> None:
    group = AuthGroup.objects.create(name="m2m")
    permission = Permission.objects.first()
    assert permission is not None
    first = group_page(group.pk)

    group.permissions.add(permission)
    second = group_page(group.pk)
    assert second["keywords"]["permissions"] == [permission.codename]

    permission.group_set.remove(group)  # the reverse side
    third = group_page(group.pk)
    assert third["keywords"]["permissions"] == []
    assert len({first["token"], second["token"], third["token"]}) == 3

    pk = group.pk
    group.delete()
    assert group_page(pk)["keywords"]["name"] is None


@model_test
@pytest.mark.usefixtures("backend")
def test_changing_a_matched_field_uncaches_the_old_value_too() -> None:
    group = AuthGroup.objects.create(name="old-name")
    old = page(auth_group_by_name, "/by-name/old-name/", slug="old-name")
    new = page(auth_group_by_name, "/by-name/new-name/", slug="new-name")
    assert old["keywords"]["exists"] and not new["keywords"]["exists"]
    group.name = "new-name"
    group.save()
    assert not page(auth_group_by_name, "/by-name/old-name/", slug="old-name")[
        "keywords"
    ]["exists"]
    assert page(auth_group_by_name, "/by-name/new-name/", slug="new-name")["keywords"][
        "exists"
    ]


@model_test
@pytest.mark.usefixtures("backend")
def test_two_views_against_one_model_are_both_uncached() -> None:
    """dispatch_uid is per view: the second view's receivers are connected too."""
    group = AuthGroup.objects.create(name="shared")
    by_pk = group_page(group.pk)
    by_name = page(auth_group_by_name, "/by-name/shared/", slug="shared")
    listing = page(auth_group_list, "/auth-groups/")
    group.save()
    assert group_page(group.pk)["token"] != by_pk["token"]
    assert (
        page(auth_group_by_name, "/by-name/shared/", slug="shared")["token"]
        != by_name["token"]
    )
    assert page(auth_group_list, "/auth-groups/")["token"] != listing["token"]


@model_test
@pytest.mark.usefixtures("backend")
def test_pages_against_models_are_uncached_by_any_change() -> None:
    group = AuthGroup.objects.create(name="a")
    permission = Permission.objects.first()
    assert permission is not None

    def listing() -> dict[str, Any]:
        return page(auth_group_list, "/auth-groups/")

    first = listing()
    assert first["keywords"]["names"] == ["a"]
    assert listing()["token"] == first["token"]
    with transaction.atomic():
        AuthGroup.objects.create(name="b")
        assert listing()["token"] == first["token"], "not before the commit"
    second = listing()
    assert second["keywords"]["names"] == ["a", "b"]
    permission.save()  # a change to the other model
    third = listing()
    assert third["token"] != second["token"]
    group.permissions.add(permission)
    assert listing()["token"] != third["token"]


def test_model_decorator_arguments() -> None:
    with pytest.raises(ValueError, match="cache_page_against_models"):
        cache_page_against_model(AuthGroup)(plain_view)
    with pytest.raises(TypeError, match="to_fields"):
        cache_page_against_model(AuthGroup, to_fields="pk")(item_page)
    with pytest.raises(ValueError, match=r"app_label\.ModelName"):
        cache_page_against_model("Group")
    with pytest.raises(TypeError, match="model class"):
        cache_page_against_models(int)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one model"):
        cache_page_against_models()
    with pytest.raises(TypeError, match="tag is a string"):
        cache_tagged_page(3)  # type: ignore[arg-type]


# -- the backend fails --------------------------------------------------------


def test_outage_calls_the_view_and_never_raises(
    redis_backend_isolated: Backend,
    calls: Counter[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = "/items/9/9/"
    assert is_cached(item_page, url, category=9, item=9)
    server = redis_backend_isolated.server
    assert server is not None
    server.stop()
    try:
        before = calls["item"]
        assert not is_cached(item_page, url, category=9, item=9)
        assert calls["item"] == before + 2
        group = Group("outage")
        assert group.get("v", "default") == "default"
        assert group.get_or_set("v", lambda: "computed") == "computed"
        group.set("v", "x")
        group.bump()
        prefixes = {get_local_prefix(group.local_key) for _ in range(3)}
        assert len(prefixes) == 3, "a fresh random version each time: never a hit"
        assert group.version() != group.version()
    finally:
        server.start()
    assert any(record.name == "syncache" for record in caplog.records)
    first = token(item_page, url, category=9, item=9)
    assert token(item_page, url, category=9, item=9) == first, "caching again"


def test_groupcache_spellings_are_accepted() -> None:
    from syncache import cache_versioned_page, cache_versionned_page
    from syncache.groups import _timeout

    assert cache_versionned_page is cache_versioned_page
    assert _timeout(None, 30) == 30
    assert _timeout(30, None) == 30
    with pytest.raises(TypeError, match="not both"):
        _timeout(30, 30)


def test_to_fields_naming_no_model_field_fails_at_startup() -> None:
    from django.contrib.auth.models import Group as AuthGroup

    from syncache.groups import GroupError, _InstancePages

    with pytest.raises(GroupError, match="no field or attribute 'fmt'"):
        _InstancePages("view", AuthGroup, ["pk", "fmt"])
    assert _InstancePages("view", AuthGroup, ["pk", "name"]).fields == ["pk", "name"]
