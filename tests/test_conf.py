"""Tests for syncache.conf: defaults, overrides and validation."""

from __future__ import annotations

import pytest
from django.test import override_settings

from syncache.conf import (
    DEFAULTS,
    ImproperlyConfiguredSyncache,
    config_problems,
    get_config,
)


def test_defaults() -> None:
    config = get_config()
    assert config.cache_alias == DEFAULTS["CACHE_ALIAS"] == "default"
    assert config.key_prefix == "syncache"
    assert config.failure_policy == "expire"
    assert config.log_interval == 60.0
    assert config.write_retries == DEFAULTS["WRITE_RETRIES"]


def test_override_settings_resets_the_cached_config() -> None:
    before = get_config()
    with override_settings(SYNCACHE={"KEY_PREFIX": "other", "LOG_INTERVAL": 5}):
        assert get_config().key_prefix == "other"
        assert get_config().log_interval == 5.0
        assert get_config().cache_alias == "default"
    assert get_config() == before


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "must be a dict"),
        ({"CACHE_ALIASES": "x"}, "unknown key 'CACHE_ALIASES'"),
        ({"CACHE_ALIAS": ""}, "CACHE_ALIAS"),
        ({"KEY_PREFIX": "has space"}, "KEY_PREFIX"),
        ({"KEY_PREFIX": "x" * 41}, "KEY_PREFIX"),
        ({"KEY_PREFIX": "é"}, "KEY_PREFIX"),
        ({"FAILURE_POLICY": "ignore"}, "FAILURE_POLICY"),
        ({"LOG_INTERVAL": -1}, "LOG_INTERVAL"),
        ({"LOG_INTERVAL": "60"}, "LOG_INTERVAL"),
        ({"WRITE_RETRIES": True}, "WRITE_RETRIES"),
        ({"WRITE_RETRIES": 1.5}, "WRITE_RETRIES"),
    ],
)
def test_problems_are_named(raw: object, message: str) -> None:
    problems = config_problems(raw)
    assert len(problems) == 1
    assert message in problems[0]
    with (
        override_settings(SYNCACHE=raw),
        pytest.raises(ImproperlyConfiguredSyncache, match=message),
    ):
        get_config()


def test_valid_config_has_no_problems() -> None:
    assert config_problems(None) == []
    assert config_problems(DEFAULTS) == []
