"""Generational groups: many cache entries share one version, bumped in one write.

Compatible with django-groupcache (same function names, arguments and group
forms), with its defects fixed.

How it works. A *group definition* and the keywords of a view call give a
*mapping* (:func:`get_local_key_mapping`); the SHA-256 of the mapping and
the view name gives the group's *local key* (:func:`get_local_key`). The
local key holds the group's *version* in the shared cache. Every entry of
the group is stored with the version it was computed under, and is served
only while the group still has that version; bumping the version
(:func:`bump_local_prefix`) invalidates the whole group, in every process,
with one write.

The group definition is one of:

* ``None``: every keyword the view received;
* a string ``s``: the constant mapping ``{"group": s}`` (a tag);
* a callable: called with the view keywords, it returns the mapping;
* a dict ``{new: old}``: ``{new: view_keywords[old]}``;
* any other sequence of names: ``{name: view_keywords[name]}``.

What is fixed over groupcache:

* Mapping values are normalised before hashing (:func:`normalize_value`),
  so the URL keyword ``"1"``, the integer ``1`` and a model instance whose
  primary key is 1 address the same group. The hash is SHA-256 over a
  canonical JSON text, the same in every process (never the builtin
  ``hash()``).
* A version is a random 62-bit number, created with ``add`` (never
  get-then-set) and stored without expiry; a bump increments it atomically
  or writes a fresh random number (:meth:`syncache.medium.Medium.bump`).
  Entries carry the version they were computed under, so an entry stored
  before its version key was evicted is refused after it: the re-seeded
  version differs, except with probability 2**-62.
* Model signals bump on commit, never on rollback, with a ``dispatch_uid``
  per view, model and signal. Until the commit, what the transaction
  renders or computes for the group is not stored: it may hold rows that
  a rollback undoes.
* Nothing about a request is stored on the decorator or on any shared
  object: decorated views are thread-safe.
* Positional view arguments are named from the view's signature; when they
  cannot be (``*args``), a ``TypeError`` says so.
* A cache outage is never an error page: the view is called and nothing is
  stored (:meth:`syncache.medium.Medium.attempt`, ``FAILURE_POLICY``).

The page cache uses Django's own helpers (``get_cache_key``,
``learn_cache_key``, ``patch_response_headers``) and follows Django's
``cache_page`` rules: only GET and HEAD requests, only 200 responses that
are not streaming, not ``Cache-Control: private``, ``no-cache`` or
``no-store``, not ``Vary: *``, no cookie set while varying on ``Cookie``
(but a hit has no ``Age`` header: syncache never reads the wall clock). Its
keys do not contain the version; the page is stored as ``(version,
response)``. A hit therefore costs one multi-get (the version and Django's
header list) and one get (the page): the same two round trips as Django's
``cache_page``.
"""

from __future__ import annotations

import datetime
import decimal
import functools
import hashlib
import importlib
import inspect
import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.conf import settings
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.exceptions import FieldDoesNotExist
from django.db import connections, models
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.urls import resolve
from django.utils.cache import (
    get_cache_key,
    get_max_age,
    has_vary_header,
    learn_cache_key,
    patch_response_headers,
    patch_vary_headers,
)

from syncache.conf import get_config
from syncache.hooks import M2M_ACTIONS, model_label, on_model_change, when_model_ready
from syncache.keys import make_cache_key
from syncache.local import on_commit_once
from syncache.medium import Generation, Medium, _Failed, get_medium, new_generation

__all__ = [
    "Group",
    "GroupError",
    "GroupKeyError",
    "NotGroupCachedError",
    "bump_local_prefix",
    "bump_local_prefix_on_commit",
    "cache_page_against_model",
    "cache_page_against_models",
    "cache_tagged_page",
    "cache_versioned_page",
    "get_local_key",
    "get_local_key_from_mapping",
    "get_local_key_mapping",
    "get_local_prefix",
    "get_view_name",
    "normalize_value",
    "uncache",
    "uncache_from_path",
    "uncache_from_tag",
]

ViewT = TypeVar("ViewT", bound=Callable[..., Any])
T = TypeVar("T")

#: A group definition: see the module documentation.
GroupSpec = (
    str | Callable[..., Mapping[str, Any]] | Mapping[str, str] | Sequence[str] | None
)
ModelRef = type[models.Model] | str

_CACHE_CONTROL_NOT_STORED = ("private", "no-cache", "no-store")


class GroupError(Exception):
    """Base class of the errors raised by :mod:`syncache.groups`."""


class GroupKeyError(GroupError, KeyError):
    """A group names a view keyword that the view call did not receive."""

    def __str__(self) -> str:
        # KeyError's own __str__ shows the repr of its argument.
        return str(self.args[0]) if self.args else ""


class NotGroupCachedError(GroupError, ValueError):
    """The view is not decorated with one of this module's page caches."""


# -- local keys ---------------------------------------------------------------


def get_view_name(view_func: Callable[..., Any]) -> str:
    """Return ``"<module>.<qualname>"`` of a view.

    For a class-based view (the function made by ``as_view()``), the name of
    the class: every ``as_view()`` function has the same qualified name.
    """
    target: Any = getattr(view_func, "view_class", None) or view_func
    return f"{target.__module__}.{target.__qualname__}"


def get_local_key_mapping(
    group: GroupSpec, view_keywords: Mapping[str, Any]
) -> Mapping[str, Any]:
    """Return the mapping that identifies the group of a view call.

    Args:
        group: The group definition (see the module documentation).
        view_keywords: The keywords the view was called with.

    Raises:
        GroupKeyError: the group names a keyword the view did not receive.
        TypeError: a callable group did not return a mapping, or the group
            is of no supported form.
    """
    if group is None:
        return view_keywords
    if isinstance(group, str):
        return {"group": group}
    if callable(group):
        mapping = group(**view_keywords)
        if not isinstance(mapping, Mapping):
            raise TypeError(
                f"The group callable {group!r} must return a mapping of names "
                f"to values; it returned a {type(mapping).__name__}."
            )
        return mapping
    if isinstance(group, Mapping):
        return {
            new: _view_keyword(group, view_keywords, old) for new, old in group.items()
        }
    if isinstance(group, Iterable) and not isinstance(group, (bytes, bytearray)):
        return {name: _view_keyword(group, view_keywords, name) for name in group}
    raise TypeError(
        f"A group is None, a string, a callable, a dict or a sequence of "
        f"keyword names, not {type(group).__name__}."
    )


def _view_keyword(group: object, view_keywords: Mapping[str, Any], name: str) -> Any:
    try:
        return view_keywords[name]
    except KeyError:
        available = ", ".join(map(repr, sorted(view_keywords))) or "none"
        raise GroupKeyError(
            f"The group {group!r} uses the view keyword {name!r}, which the "
            f"view did not receive; the keywords it received: {available}."
        ) from None


def normalize_value(name: str, value: object) -> str:
    """Return the text a mapping value is hashed as.

    A model instance stands for its primary key. ``None``, booleans,
    integers, strings, UUIDs, decimals, dates and datetimes become
    ``str(value)`` (so ``True`` is ``"True"``, ``None`` is ``"None"``, a date
    is ``"2024-05-01"`` and ``Decimal("1.0")`` is ``"1.0"``, not ``"1"``);
    integer and string enumerations count as their value. A URL keyword and
    a model field therefore address the same group when the URL spells the
    value as ``str()`` does.

    Raises:
        TypeError: any other type (floats, lists, dicts, objects): their text
            is ambiguous or unstable.
        ValueError: a model instance without a primary key.
    """
    if type(value) is str:
        return value
    if isinstance(value, models.Model):
        if value.pk is None:
            raise ValueError(
                f"Group keyword {name!r} is an unsaved {type(value).__name__} "
                f"(no primary key); it cannot address a group."
            )
        return normalize_value(name, value.pk)
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, (uuid.UUID, decimal.Decimal, datetime.date)):
        return str(value)
    raise TypeError(
        f"Group keyword {name!r} is a {type(value).__name__}; group values must "
        f"be None, bool, int, str, UUID, Decimal, date, datetime or a saved "
        f"model instance."
    )


def _hash_mapping(mapping: Mapping[str, Any], view_name: str | None = None) -> str:
    """Return the SHA-256 of the normalised mapping and the view name.

    The text hashed is canonical JSON (sorted pairs, fixed separators, ASCII
    only), so the digest is the same in every process and Python version.
    """
    pairs = []
    for name, value in mapping.items():
        if not isinstance(name, str):
            raise TypeError(
                f"Group keyword names must be strings, not {type(name).__name__} "
                f"({name!r})."
            )
        pairs.append((name, normalize_value(name, value)))
    pairs.sort()
    text = json.dumps([pairs, view_name], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _key_prefix(key_prefix: str | None) -> str:
    if key_prefix is None:
        return str(getattr(settings, "CACHE_MIDDLEWARE_KEY_PREFIX", "") or "")
    return key_prefix


def get_local_key_from_mapping(
    mapping: Mapping[str, Any],
    view_name: str | None = None,
    key_prefix: str | None = None,
) -> str:
    """Return the local key (the key of the version) of a group mapping.

    Args:
        mapping: Names to values; values are normalised (see
            :func:`normalize_value`).
        view_name: Part of the hash when given, so two views with the same
            keywords are two groups.
        key_prefix: Defaults to ``settings.CACHE_MIDDLEWARE_KEY_PREFIX``.

    Raises:
        TypeError: a name is not a string or a value is of an unsupported
            type.
    """
    return make_cache_key(
        [_key_prefix(key_prefix), _hash_mapping(mapping, view_name)],
        namespace="group",
    )


def get_local_key(
    group: GroupSpec,
    view_keywords: Mapping[str, Any],
    view_name: str | None = None,
    key_prefix: str | None = None,
) -> str:
    """Return the local key of the group a view call belongs to.

    Raises:
        GroupKeyError: the group names a keyword the view did not receive.
        TypeError: see :func:`get_local_key_mapping` and
            :func:`normalize_value`.
    """
    return get_local_key_from_mapping(
        get_local_key_mapping(group, view_keywords), view_name, key_prefix
    )


# -- versions -----------------------------------------------------------------


def _read_version(medium: Medium, local_key: str) -> Generation | _Failed:
    """The version at ``local_key``, seeded with ``add`` when missing."""
    version = medium.attempt("reading", local_key, lambda: medium.get(local_key))
    if version is None:
        return _seed_version(medium, local_key)
    return version


def _seed_version(medium: Medium, local_key: str) -> Generation | _Failed:
    return medium.attempt(
        "seeding", local_key, lambda: medium.seed(local_key, missing=True)
    )


def get_local_prefix(
    local_key: str, key_prefix: str | None = None, *, cache_alias: str | None = None
) -> str:
    """Return ``"<key_prefix>.local.<version>."`` for a local key (one read).

    A missing version is created with ``add``. When the backend fails, the
    prefix holds a fresh random version instead: a key made with it misses,
    it never hits an entry made under an older version.

    Args:
        local_key: From :func:`get_local_key`.
        key_prefix: Defaults to ``settings.CACHE_MIDDLEWARE_KEY_PREFIX``.
        cache_alias: Defaults to ``SYNCACHE["CACHE_ALIAS"]``.
    """
    version = _read_version(get_medium(cache_alias), local_key)
    if isinstance(version, _Failed):
        version = new_generation()
    parts = (_key_prefix(key_prefix), "local", str(version))
    return ".".join(part for part in parts if part) + "."


def bump_local_prefix(local_key: str, *, cache_alias: str | None = None) -> None:
    """Give the group a version never used before: every entry is invalid.

    An atomic increment from the stored version, or a fresh random version
    where the backend has no atomic increment (or the key was evicted). A
    backend failure is logged (see ``SYNCACHE["FAILURE_POLICY"]``).
    """
    medium = get_medium(cache_alias)
    medium.attempt("bumping", local_key, lambda: medium.bump(local_key))


@dataclass(frozen=True)
class _Bump:
    """An on-commit bump; equal for the same key, so it runs once per commit."""

    local_key: str
    cache_alias: str | None

    def __call__(self) -> None:
        bump_local_prefix(self.local_key, cache_alias=self.cache_alias)


def bump_local_prefix_on_commit(
    local_key: str, using: str | None = None, *, cache_alias: str | None = None
) -> None:
    """Bump the group when the transaction on ``using`` commits.

    At once outside a transaction, never on rollback, once per commit however
    many times it is asked.
    """
    on_commit_once(_Bump(local_key, cache_alias), using)


def _bump_pending(local_key: str) -> bool:
    """Whether a transaction open in this thread will bump the group on commit.

    A value computed now may hold the transaction's uncommitted rows; stored
    under the current version, it would outlive a rollback (which bumps
    nothing). Such values are returned but not stored.
    """
    for connection in connections.all(initialized_only=True):
        if connection.in_atomic_block and any(
            isinstance(entry[1], _Bump) and entry[1].local_key == local_key
            for entry in connection.run_on_commit
        ):
            return True
    return False


# -- the object API -----------------------------------------------------------


def _carried(entry: object, version: Generation) -> tuple[bool, Any]:
    """Whether ``entry`` is ``(version, value)`` for this version; the value."""
    if type(entry) is tuple and len(entry) == 2 and entry[0] == version:
        return True, entry[1]
    return False, None


class Group:
    """A group of cache entries for code that is not a view.

    ``Group(name, **keywords)`` is the group with mapping ``keywords`` and
    view name ``name``: ``Group(get_view_name(view), pk=3)`` is the group of
    the pages a view decorated with the default key prefix cached for
    ``pk=3``, so ``.bump()`` on it uncaches them.

    :meth:`get`, :meth:`set` and :meth:`get_or_set` store ``(version,
    value)`` under a key without the version, and read the version and the
    entry in one round trip; an entry made under another version is a miss.
    :meth:`key` returns groupcache-style keys with the version in them, for
    code that talks to a cache itself.

    Args:
        name: The group's name (a view name, or any namespace).
        cache_alias: Where the version and the entries live; defaults to
            ``SYNCACHE["CACHE_ALIAS"]``.
        keywords: The group's mapping; values as in :func:`normalize_value`.

    Raises:
        TypeError: a keyword value is of an unsupported type.
    """

    def __init__(
        self, name: str, /, *, cache_alias: str | None = None, **keywords: Any
    ) -> None:
        self.name = name
        self.keywords = keywords
        self.cache_alias = cache_alias
        #: The key of the group's version.
        self.local_key = get_local_key_from_mapping(keywords, view_name=name)

    def __repr__(self) -> str:
        keywords = "".join(f", {k}={v!r}" for k, v in self.keywords.items())
        return f"<Group {self.name!r}{keywords}>"

    @property
    def medium(self) -> Medium:
        """The coordination medium of this group's cache alias."""
        return get_medium(self.cache_alias)

    def version(self) -> Generation:
        """Return the group's version (one read; created when missing).

        When the backend fails, a fresh random version: nothing was stored
        under it.
        """
        version = _read_version(self.medium, self.local_key)
        return new_generation() if isinstance(version, _Failed) else version

    @staticmethod
    def versions(groups: Iterable[Group]) -> list[Generation]:
        """Return the versions of many groups: one round trip per cache alias.

        Missing versions are created; on a backend failure, a fresh random
        version, as :meth:`version`.
        """
        groups = list(groups)
        versions: list[Generation] = [None] * len(groups)
        positions: dict[Medium, list[int]] = {}
        for position, group in enumerate(groups):
            positions.setdefault(group.medium, []).append(position)
        for medium, members in positions.items():
            keys = [groups[position].local_key for position in members]
            found = medium.attempt(
                "reading", keys[0], functools.partial(medium.get_many, keys)
            )
            for index, position in enumerate(members):
                version = found if isinstance(found, _Failed) else found[index]
                if version is None:
                    version = _seed_version(medium, keys[index])
                versions[position] = (
                    new_generation() if isinstance(version, _Failed) else version
                )
        return versions

    def key(self, *parts: str, version: Generation | None = None) -> str:
        """Return a key for ``parts`` under the current version (one read).

        Args:
            parts: The key's own parts.
            version: Use this version (from :meth:`versions`) instead of
                reading it.
        """
        if version is None:
            version = self.version()
        return make_cache_key(
            ["grouped", self.local_key, str(version), *parts], namespace="group"
        )

    def _entry_key(self, key: str) -> str:
        return make_cache_key(["group-entry", self.local_key, key], namespace="group")

    def _read(self, key: str) -> tuple[Medium, str, Generation | _Failed, Any]:
        """Read the version and the entry for ``key`` in one round trip."""
        medium = self.medium
        entry_key = self._entry_key(key)
        found = medium.attempt(
            "reading",
            self.local_key,
            lambda: medium.get_many(
                [self.local_key, entry_key], user_data=(entry_key,)
            ),
        )
        if isinstance(found, _Failed):
            return medium, entry_key, found, None
        return medium, entry_key, found[0], found[1]

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value stored for ``key`` under the current version.

        One round trip. ``default`` when there is none, when it was stored
        under another version, or when the backend fails.
        """
        _, _, version, entry = self._read(key)
        if version is None or isinstance(version, _Failed):
            return default
        hit, value = _carried(entry, version)
        return value if hit else default

    def set(
        self,
        key: str,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        *,
        version: Generation | None = None,
    ) -> None:
        """Store ``value`` for ``key`` under the group's version.

        Args:
            key: The entry's name within the group.
            value: Anything the cache can pickle.
            timeout: As Django's ``cache.set``.
            version: The version read *before* computing ``value``
                (:meth:`version`). Without it the version is read now, and
                a bump made while ``value`` was computed is missed; prefer
                :meth:`get_or_set`, which does this for you.

        Nothing is stored while a transaction open in this thread waits to
        bump this group on commit: ``value`` may hold rows that a rollback
        undoes.
        """
        medium = self.medium
        if _bump_pending(self.local_key):
            return
        if version is None:
            version = _read_version(medium, self.local_key)
            if isinstance(version, _Failed):
                return
        entry_key = self._entry_key(key)
        medium.attempt(
            "storing",
            entry_key,
            lambda: medium.cache.set(entry_key, (version, value), timeout),
        )

    def get_or_set(
        self, key: str, default: Callable[[], T] | T, timeout: Any = DEFAULT_TIMEOUT
    ) -> T:
        """Return the value for ``key``, computing and storing it on a miss.

        The version is read (with the entry, one round trip) before
        ``default`` is called, and the value is stored under that version:
        if the group is bumped meanwhile, the value is never served.
        When the backend fails, or a transaction open in this thread waits
        to bump the group (as :meth:`set`), the value is returned and not
        stored.
        """
        medium, entry_key, version, entry = self._read(key)
        if version is not None and not isinstance(version, _Failed):
            hit, value = _carried(entry, version)
            if hit:
                return cast(T, value)
        elif version is None:
            version = _seed_version(medium, self.local_key)
        computed = default() if callable(default) else default
        if not isinstance(version, _Failed) and not _bump_pending(self.local_key):
            medium.attempt(
                "storing",
                entry_key,
                lambda: medium.cache.set(entry_key, (version, computed), timeout),
            )
        return computed

    def bump(self) -> None:
        """Invalidate every entry of the group, in every process, now."""
        bump_local_prefix(self.local_key, cache_alias=self.cache_alias)

    def bump_on_commit(self, using: str | None = None) -> None:
        """Invalidate every entry of the group when the transaction commits."""
        bump_local_prefix_on_commit(self.local_key, using, cache_alias=self.cache_alias)


# -- the page cache -----------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _PageSpec:
    """How a decorated view finds its group; immutable, shared by requests."""

    view_name: str
    group: GroupSpec
    vary_on_view: bool
    key_prefix: str | None
    cache_alias: str | None
    timeout: float | None
    signature: inspect.Signature | None

    @property
    def needs_keywords(self) -> bool:
        return not (
            isinstance(self.group, str)
            or (isinstance(self.group, (Sequence, Mapping)) and not self.group)
        )

    def keywords(
        self, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> Mapping[str, Any]:
        """The view keywords, positional arguments named by the signature."""
        if not args or not self.needs_keywords:
            return kwargs
        if self.signature is None:
            raise TypeError(self._unnamed(args, "its signature cannot be read"))
        try:
            bound = self.signature.bind_partial(None, *args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{self.view_name}: {error}") from None
        keywords: dict[str, Any] = {}
        parameters = self.signature.parameters
        for position, (name, value) in enumerate(bound.arguments.items()):
            kind = parameters[name].kind
            if position == 0 and kind is not inspect.Parameter.VAR_POSITIONAL:
                continue  # the request
            if kind is inspect.Parameter.VAR_POSITIONAL:
                values = value[1:] if position == 0 else value
                if values:
                    raise TypeError(self._unnamed(values, f"it takes *{name}"))
            elif kind is inspect.Parameter.VAR_KEYWORD:
                keywords.update(value)
            else:
                keywords[name] = value
        return keywords

    def _unnamed(self, args: Sequence[Any], why: str) -> str:
        return (
            f"The group-cached view {self.view_name} received positional "
            f"arguments {tuple(args)!r} that cannot be named ({why}). Use named "
            f"URL parameters (path('<int:pk>/', ...) or (?P<pk>...)), or pass "
            f"the decorator a group that needs no keywords (a string)."
        )

    def local_key(self, keywords: Mapping[str, Any]) -> str:
        return get_local_key(
            self.group,
            keywords,
            self.view_name if self.vary_on_view else None,
            self.key_prefix,
        )


#: View name -> how its pages are grouped; filled by the decorators, read
#: by :func:`uncache` and :func:`uncache_from_path`.
_page_specs: dict[str, _PageSpec] = {}


class _VersionAndHeaderList:
    """Stands in for the cache in Django's ``get_cache_key``.

    When Django asks for the header list, it is read together with the
    group's version, in one round trip.
    """

    __slots__ = ("header_list", "local_key", "medium", "version")

    def __init__(self, medium: Medium, local_key: str) -> None:
        self.medium = medium
        self.local_key = local_key
        self.version: Generation | None = None
        self.header_list: Any = None

    def get(self, key: str, default: Any = None) -> Any:
        self.version, self.header_list = self.medium.get_many(
            [self.local_key, key], user_data=(key,)
        )
        return default if self.header_list is None else self.header_list


class _KnownHeaderList:
    """Answers ``get_cache_key`` with a header list already read."""

    __slots__ = ("header_list",)

    def __init__(self, header_list: Any) -> None:
        self.header_list = header_list

    def get(self, key: str, default: Any = None) -> Any:
        return self.header_list


@dataclass(frozen=True)
class _Miss:
    """What a request that missed needs to store its response."""

    spec: _PageSpec
    medium: Medium
    local_key: str
    page_prefix: str
    version: Generation


def _page_prefix(local_key: str) -> str:
    """The key prefix of a group's pages and header lists.

    Derived from the local key, not the version, so that a hit reads the
    version and the header list together. Hashed so that Django's page key
    stays within memcached's 250 bytes whatever the local key's length.
    """
    digest = hashlib.sha256(local_key.encode()).hexdigest()[:32]
    return f"{get_config().key_prefix}.{digest}"


def _lookup(
    spec: _PageSpec, request: HttpRequest, args: Sequence[Any], kwargs: dict[str, Any]
) -> HttpResponseBase | _Miss | None:
    """Return the cached response, what is needed to store one, or None
    (do not use the cache for this request)."""
    if request.method not in ("GET", "HEAD"):
        return None
    local_key = spec.local_key(spec.keywords(args, kwargs))
    medium = get_medium(spec.cache_alias)
    page_prefix = _page_prefix(local_key)
    reader = _VersionAndHeaderList(medium, local_key)
    page_key = medium.attempt(
        "reading",
        local_key,
        lambda: get_cache_key(request, page_prefix, "GET", cast(BaseCache, reader)),
    )
    if isinstance(page_key, _Failed):
        return None
    version = reader.version
    if version is None:
        version = _seed_version(medium, local_key)
        if isinstance(version, _Failed):
            return None
    elif page_key is not None:
        cached = _cached_page(request, medium, local_key, page_prefix, page_key, reader)
        if cached is not None:
            return cached
    return _Miss(spec, medium, local_key, page_prefix, version)


def _cached_page(
    request: HttpRequest,
    medium: Medium,
    local_key: str,
    page_prefix: str,
    page_key: str,
    reader: _VersionAndHeaderList,
) -> HttpResponseBase | None:
    cache = medium.cache
    entry = medium.attempt("reading a page for", local_key, lambda: cache.get(page_key))
    hit, response = _carried(entry, reader.version)
    if not hit and request.method == "HEAD":
        known = cast(BaseCache, _KnownHeaderList(reader.header_list))
        head_key = get_cache_key(request, page_prefix, "HEAD", known)
        if head_key is not None:
            entry = medium.attempt(
                "reading a page for", local_key, lambda: cache.get(head_key)
            )
            hit, response = _carried(entry, reader.version)
    # Unlike Django's cache middleware, no Age header: it would be computed
    # from the wall clock, which syncache never reads.
    return cast(HttpResponseBase, response) if hit else None


def _store(
    miss: _Miss, request: HttpRequest, response: HttpResponseBase
) -> HttpResponseBase:
    """Store ``response`` under the version read before the view ran.

    The rules are those of Django's ``UpdateCacheMiddleware``.
    """
    if response.streaming or response.status_code not in (200, 304):
        return response
    if response.cookies and has_vary_header(response, "Cookie"):
        return response
    cache_control = response.get("Cache-Control", "").lower()
    if any(directive in cache_control for directive in _CACHE_CONTROL_NOT_STORED):
        return response
    if has_vary_header(response, "*"):
        return response
    timeout = miss.spec.timeout
    if timeout is None:
        timeout = get_max_age(response)
        if timeout is None:
            timeout = settings.CACHE_MIDDLEWARE_SECONDS
        elif timeout == 0:
            return response
    patch_response_headers(response, int(timeout))
    if request.headers.get("Authorization") and "public" not in cache_control:
        patch_vary_headers(response, ("Authorization",))
    if timeout and response.status_code == 200 and not _bump_pending(miss.local_key):
        medium = miss.medium
        cache = medium.cache

        def store() -> None:
            page_key = learn_cache_key(
                request, response, timeout, miss.page_prefix, cache=cache
            )
            cache.set(page_key, (miss.version, response), timeout)

        medium.attempt("storing a page for", miss.local_key, store)
    return response


def _finish(
    miss: _Miss, request: HttpRequest, response: HttpResponseBase
) -> HttpResponseBase:
    render_callback = getattr(response, "add_post_render_callback", None)
    if render_callback is not None:
        # A TemplateResponse: store it once rendered (at once if it is).
        render_callback(lambda rendered: _store(miss, request, rendered))
        return response
    return _store(miss, request, response)


def _page_decorator(
    group: GroupSpec,
    timeout: float | None,
    vary_on_view: bool,
    key_prefix: str | None,
    cache_alias: str | None,
) -> Callable[[ViewT], ViewT]:
    def decorate(view: ViewT) -> ViewT:
        try:
            signature: inspect.Signature | None = inspect.signature(view)
        except (TypeError, ValueError):
            signature = None
        spec = _PageSpec(
            get_view_name(view),
            group,
            vary_on_view,
            key_prefix,
            cache_alias,
            timeout,
            signature,
        )
        _page_specs[spec.view_name] = spec

        if iscoroutinefunction(view):
            # The cache I/O runs in a thread: a database cache may not be used
            # from the event loop.
            async def async_wrapper(
                request: HttpRequest, *args: Any, **kwargs: Any
            ) -> HttpResponseBase:
                found = await sync_to_async(_lookup)(spec, request, args, kwargs)
                if isinstance(found, HttpResponseBase):
                    return found
                response = await view(request, *args, **kwargs)
                if found is None:
                    return cast(HttpResponseBase, response)
                return await sync_to_async(_finish)(found, request, response)

            return cast(ViewT, functools.wraps(view)(async_wrapper))

        def wrapper(
            request: HttpRequest, *args: Any, **kwargs: Any
        ) -> HttpResponseBase:
            found = _lookup(spec, request, args, kwargs)
            if isinstance(found, HttpResponseBase):
                return found
            response = view(request, *args, **kwargs)
            return response if found is None else _finish(found, request, response)

        return cast(ViewT, functools.wraps(view)(wrapper))

    return decorate


def cache_versioned_page(
    group: GroupSpec = None,
    timeout: float | None = None,
    *,
    vary_on_view: bool = True,
    key_prefix: str | None = None,
    cache_alias: str | None = None,
    cache_timeout: float | None = None,
) -> Callable[[ViewT], ViewT]:
    """Cache a view's pages in the group each call belongs to.

    Args:
        group: The group definition (see the module documentation); None
            groups by every view keyword.
        timeout: Seconds a page is kept. None: the response's ``max-age``,
            else ``settings.CACHE_MIDDLEWARE_SECONDS``.
        vary_on_view: Include the view name in the group, so another view
            with the same keywords is another group.
        key_prefix: Defaults to ``settings.CACHE_MIDDLEWARE_KEY_PREFIX``.
        cache_alias: Where versions and pages live; defaults to
            ``SYNCACHE["CACHE_ALIAS"]``.
        cache_timeout: groupcache's name for ``timeout``.

    Raises:
        TypeError: at request time, when the view got positional arguments
            it does not name and the group needs them.
    """
    timeout = _timeout(timeout, cache_timeout)
    return _page_decorator(group, timeout, vary_on_view, key_prefix, cache_alias)


#: groupcache's spelling.
cache_versionned_page = cache_versioned_page


def _timeout(timeout: float | None, cache_timeout: float | None) -> float | None:
    """Accept groupcache's ``cache_timeout=`` as well as ``timeout``."""
    if cache_timeout is None:
        return timeout
    if timeout is not None:
        raise TypeError("Pass timeout or cache_timeout (its old name), not both.")
    return cache_timeout


def cache_tagged_page(
    tag: str, timeout: float | None = None, *, cache_timeout: float | None = None
) -> Callable[[ViewT], ViewT]:
    """Cache a view's pages in the group of ``tag``, shared by every view.

    :func:`uncache_from_tag` invalidates them all.
    """
    if not isinstance(tag, str):
        raise TypeError(f"A tag is a string, not {type(tag).__name__}.")
    return _page_decorator(tag, _timeout(timeout, cache_timeout), False, None, None)


# -- pages against models -----------------------------------------------------


def _view_parameters(view: Callable[..., Any]) -> list[str]:
    """The names of a view's parameters after the request."""
    try:
        parameters = list(inspect.signature(view).parameters.values())[1:]
    except (TypeError, ValueError):
        return []
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [parameter.name for parameter in parameters if parameter.kind in named]


def _field_map(
    view: Callable[..., Any], to_fields: Sequence[str] | Mapping[str, str] | None
) -> dict[str, str]:
    """``{model field: view keyword}`` from ``to_fields``."""
    if to_fields is None:
        fields = {name: name for name in _view_parameters(view)}
    elif isinstance(to_fields, Mapping):
        fields = dict(to_fields)
    elif isinstance(to_fields, str) or not isinstance(to_fields, Iterable):
        raise TypeError(
            f"to_fields is a sequence of field names or a dict of field name "
            f"to view keyword, not {to_fields!r}."
        )
    else:
        fields = {name: name for name in to_fields}
    if not fields:
        raise ValueError(
            f"No field to match {get_view_name(view)}'s pages against: name "
            f"them in to_fields, or use cache_page_against_models() to "
            f"uncache every page of the view on any change."
        )
    return fields


class _InstancePages:
    """Bumps the page group of the instances a model signal is about."""

    def __init__(
        self, view_name: str, model: type[models.Model], fields: Iterable[str]
    ) -> None:
        self.view_name = view_name
        self.model = model
        self.fields = list(fields)
        pk = model._meta.pk
        pk_names = {"pk", pk.name, pk.attname} if pk is not None else {"pk"}
        #: Attribute to read per field: a foreign key's raw id, not the row.
        self.attributes = [self._attribute(name) for name in self.fields]
        self.by_pk_only = set(self.fields) <= pk_names
        self.old_values_key = f"_syncache_group_old_{id(self)}"

    def _attribute(self, name: str) -> str:
        try:
            field = self.model._meta.get_field(name)
        except FieldDoesNotExist:
            if name == "pk" or hasattr(self.model, name):  # a property
                return name
            label = self.model._meta.label
            raise GroupError(
                f"cache_page_against_model({label}) matches the view keyword "
                f"{name!r} against {label}, which has no field or attribute "
                f"{name!r}. Pass to_fields= with the model fields to match "
                f"(or a dict {{model_field: view_keyword}})."
            ) from None
        return getattr(field, "attname", None) or name

    def _values(self, instance: models.Model) -> tuple[Any, ...]:
        return tuple(getattr(instance, attribute) for attribute in self.attributes)

    def bump(self, values: Sequence[Any], using: str | None) -> None:
        local_key = get_local_key_from_mapping(
            dict(zip(self.fields, values, strict=True)), self.view_name
        )
        bump_local_prefix_on_commit(local_key, using)

    def before_save(self, instance: models.Model, using: str | None) -> None:
        """Remember the stored values of fields a save may change (a slug):
        the pages at the old values are stale too."""
        if self.by_pk_only or instance._state.adding or instance.pk is None:
            return
        manager = self.model._base_manager.using(using)
        old = manager.filter(pk=instance.pk).values_list(*self.attributes).first()
        if old is not None:
            instance.__dict__[self.old_values_key] = old

    def saved(self, instance: models.Model, using: str | None) -> None:
        values = self._values(instance)
        self.bump(values, using)
        old = instance.__dict__.pop(self.old_values_key, None)
        if old is not None and tuple(old) != values:
            self.bump(old, using)

    def deleted(self, instance: models.Model, using: str | None) -> None:
        self.bump(self._values(instance), using)

    def related_changed(self, pks: Iterable[Any], using: str | None) -> None:
        if self.by_pk_only:
            for pk in pks:
                self.bump([pk] * len(self.fields), using)
            return
        manager = self.model._base_manager.using(using)
        for values in manager.filter(pk__in=list(pks)).values_list(*self.attributes):
            self.bump(values, using)


def _connect_instance_pages(
    view_name: str, fields: Iterable[str], model: type[models.Model]
) -> None:
    pages = _InstancePages(view_name, model, fields)
    uid = f"syncache.groups:{view_name}:{model._meta.label}"

    def before_save(
        sender: Any, instance: Any, using: str | None = None, **_: Any
    ) -> None:
        pages.before_save(instance, using)

    def saved(sender: Any, instance: Any, using: str | None = None, **_: Any) -> None:
        pages.saved(instance, using)

    def deleted(sender: Any, instance: Any, using: str | None = None, **_: Any) -> None:
        pages.deleted(instance, using)

    def m2m(
        sender: Any,
        instance: Any,
        action: str,
        model: type[models.Model],
        pk_set: set[Any] | None,
        using: str | None = None,
        **_: Any,
    ) -> None:
        if action not in M2M_ACTIONS:
            return
        if isinstance(instance, pages.model):
            pages.saved(instance, using)
        if pk_set and issubclass(model, pages.model):
            pages.related_changed(pk_set, using)

    pre_save.connect(
        before_save, sender=model, weak=False, dispatch_uid=uid + ":pre_save"
    )
    post_save.connect(saved, sender=model, weak=False, dispatch_uid=uid + ":post_save")
    post_delete.connect(
        deleted, sender=model, weak=False, dispatch_uid=uid + ":post_delete"
    )
    m2m_changed.connect(m2m, weak=False, dispatch_uid=uid + ":m2m_changed")


def cache_page_against_model(
    model: ModelRef,
    timeout: float | None = None,
    to_fields: Sequence[str] | Mapping[str, str] | None = None,
    *,
    cache_timeout: float | None = None,
) -> Callable[[ViewT], ViewT]:
    """Cache a view's pages per instance of ``model``; a change uncaches them.

    When an instance is saved or deleted, or its many-to-many relations
    change (from either side), the pages of the view whose keywords match the
    instance's fields are uncached when the transaction commits. A save that
    changes a matched field (a slug) uncaches the pages at the old value
    too (one query before the save, skipped when only the primary key is
    matched). The reverse side's ``clear()`` does not say which instances
    it touched: it uncaches nothing.

    Args:
        model: A model class or ``"app_label.ModelName"``.
        timeout: As :func:`cache_versioned_page`.
        to_fields: The model fields matched against the view keywords of
            the same names, or ``{model_field: view_keyword}``. Default: the
            names of the view's parameters after the request.

    Raises:
        ValueError: no field to match.
        TypeError: ``to_fields`` or ``model`` is of the wrong type.
    """
    model_label(model)

    def decorate(view: ViewT) -> ViewT:
        view_name = get_view_name(view)
        fields = _field_map(view, to_fields)
        decorated = _page_decorator(
            fields, _timeout(timeout, cache_timeout), True, None, None
        )(view)
        when_model_ready(
            model,
            lambda resolved: _connect_instance_pages(view_name, fields, resolved),
        )
        return decorated

    return decorate


def _connect_all_pages(view_name: str, model: type[models.Model]) -> None:
    def bump(using: str | None) -> None:
        # The key depends on settings: computed when the change happens.
        bump_local_prefix_on_commit(get_local_key_from_mapping({}, view_name), using)

    on_model_change(model, f"syncache.groups:{view_name}:{model._meta.label}", bump)


def cache_page_against_models(
    *models_: ModelRef,
    timeout: float | None = None,
    cache_timeout: float | None = None,
) -> Callable[[ViewT], ViewT]:
    """Cache a view's pages; any change to ``models_`` uncaches all of them.

    Saves, deletes and many-to-many changes of any of the models uncache
    every page of the view when the transaction commits.

    Raises:
        ValueError: no model given, or a model string is not
            ``"app_label.ModelName"``.
    """
    if not models_:
        raise ValueError("cache_page_against_models() needs at least one model.")
    for model in models_:
        model_label(model)

    def decorate(view: ViewT) -> ViewT:
        view_name = get_view_name(view)
        decorated = _page_decorator(
            (), _timeout(timeout, cache_timeout), True, None, None
        )(view)
        for model in models_:
            when_model_ready(model, functools.partial(_connect_all_pages, view_name))
        return decorated

    return decorate


# -- uncaching ----------------------------------------------------------------


def _page_spec(view_name: str) -> _PageSpec:
    spec = _page_specs.get(view_name)
    if spec is None:
        # The view's module may not be imported yet in this process (a
        # management command): importing it runs the decorator.
        parts = view_name.split(".")
        for end in range(len(parts) - 1, 0, -1):
            try:
                importlib.import_module(".".join(parts[:end]))
            except ImportError:
                continue
            break
        spec = _page_specs.get(view_name)
    if spec is None:
        raise NotGroupCachedError(
            f"{view_name!r} is not a view decorated with a syncache.groups page "
            f"cache (cache_versioned_page, cache_tagged_page, "
            f"cache_page_against_model(s))."
        )
    return spec


def uncache(view_name: str, **view_keywords: Any) -> None:
    """Uncache the pages of the group a call of ``view_name`` belongs to.

    Args:
        view_name: As :func:`get_view_name` gives it.
        view_keywords: The keywords of the call.

    Raises:
        NotGroupCachedError: the view is not group-cached.
        GroupKeyError: the group needs a keyword not given.
    """
    spec = _page_spec(view_name)
    bump_local_prefix(spec.local_key(view_keywords), cache_alias=spec.cache_alias)


def uncache_from_tag(tag: str) -> None:
    """Uncache every page cached with :func:`cache_tagged_page` ``(tag)``."""
    bump_local_prefix(get_local_key(tag, {}, None))


def uncache_from_path(path: str, urlconf: str | None = None) -> None:
    """Uncache the pages of the group the view serving ``path`` puts it in.

    Raises:
        django.urls.Resolver404: no view serves ``path``.
        NotGroupCachedError: the view serving it is not group-cached.
    """
    match = resolve(path, urlconf)
    spec = _page_spec(get_view_name(match.func))
    keywords = spec.keywords(match.args, match.kwargs)
    bump_local_prefix(spec.local_key(keywords), cache_alias=spec.cache_alias)
