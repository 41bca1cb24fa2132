"""Tests for syncache.keys.make_cache_key."""

from __future__ import annotations

import pytest
from django.core.cache.backends.base import memcache_key_warnings
from django.test import override_settings
from hypothesis import given
from hypothesis import strategies as st

from syncache.keys import DEFAULT_MAX_LENGTH, MEMCACHED_MAX_KEY_LENGTH, make_cache_key

keys = st.one_of(st.text(), st.lists(st.text(), min_size=1, max_size=6))

#: Django's own key around syncache's: "<KEY_PREFIX>:<version>:<key>", with
#: the longest prefix the W003 check lets through.
DJANGO_OVERHEAD = "p" * (MEMCACHED_MAX_KEY_LENGTH - DEFAULT_MAX_LENGTH - 4) + ":1:"


def _as_tuple(key: str | list[str]) -> tuple[str, ...]:
    return (key,) if isinstance(key, str) else tuple(key)


@given(keys)
def test_every_key_is_valid_on_memcached(key: str | list[str]) -> None:
    made = make_cache_key(key)
    assert len(made.encode()) <= DEFAULT_MAX_LENGTH
    assert list(memcache_key_warnings(DJANGO_OVERHEAD + made)) == []


@given(keys, keys)
def test_distinct_inputs_give_distinct_keys(
    first: str | list[str], second: str | list[str]
) -> None:
    if _as_tuple(first) != _as_tuple(second):
        assert make_cache_key(first) != make_cache_key(second)
    else:
        assert make_cache_key(first) == make_cache_key(second)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (["a:b"], ["a", "b"]),
        (["a", ""], ["a"]),
        (["a%3Ab"], ["a:b"]),
        (["x" * 300], ["x" * 301]),
        (["x" * 300], ["x" * 299, "x"]),
        (["k é"], ["k e"]),
    ],
)
def test_injective_on_tricky_pairs(first: list[str], second: list[str]) -> None:
    assert make_cache_key(first) != make_cache_key(second)


def test_short_key_is_readable_and_namespaced() -> None:
    assert make_cache_key("site-settings") == "syncache:site-settings"
    assert make_cache_key(["user", "42"]) == "syncache:user:42"
    assert make_cache_key("a b") == "syncache:a%20b"


def test_long_key_is_hashed_with_readable_head() -> None:
    made = make_cache_key("x" * 1000)
    assert made.startswith("syncache:xxx")
    assert "#" in made
    assert len(made) <= DEFAULT_MAX_LENGTH


def test_prefix_comes_from_settings() -> None:
    with override_settings(SYNCACHE={"KEY_PREFIX": "mysite"}):
        assert make_cache_key("k") == "mysite:k"
    assert make_cache_key("k", prefix="other") == "other:k"


@pytest.mark.parametrize(
    ("key", "error", "message"),
    [
        ([], ValueError, "at least one part"),
        (b"bytes", TypeError, "not bytes"),
        (42, TypeError, "not int"),
        (["a", 1], TypeError, "Convert it with str"),
    ],
)
def test_bad_keys_get_clear_errors(key: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        make_cache_key(key)  # type: ignore[arg-type]


def test_max_length_too_small_for_hash() -> None:
    with pytest.raises(ValueError, match="leaves no room"):
        make_cache_key("x" * 100, max_length=50)


def test_namespaces_never_meet() -> None:
    plain = make_cache_key("x", prefix="p")
    spaced = make_cache_key("x", prefix="p", namespace="dogpile")
    assert (plain, spaced) == ("p:x", "p!dogpile:x")


def test_the_longest_prefix_and_a_namespace_still_hash_long_keys() -> None:
    """40 characters of KEY_PREFIX plus "!dogpile" are longer than the
    readable head of a hashed key: the head grows to keep them."""
    prefix = "p" * 40
    key = make_cache_key("x" * 300, prefix=prefix, namespace="dogpile")
    assert key.startswith(prefix + "!dogpile:")
    assert len(key) <= DEFAULT_MAX_LENGTH
    assert key != make_cache_key("x" * 301, prefix=prefix, namespace="dogpile")
