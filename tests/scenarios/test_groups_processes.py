"""Generational groups across real processes: local keys hash the same in
every process, and a page cached against a model is fresh in every process
after a change committed through one. Ordering uses barriers, never sleeps.
"""

from __future__ import annotations

import datetime
import decimal
import itertools
import os
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import Group as AuthGroup
from django.db import transaction
from django.http import HttpRequest, HttpResponse

from syncache.groups import Group, cache_page_against_model, get_local_key
from tests.harness.backends import Backend
from tests.harness.workers import make_barrier, run_in_processes, start_processes

WORKERS = 3

#: (group, view keywords, view name): every group form and value type.
CASES: list[tuple[Any, dict[str, Any], str | None]] = [
    (None, {"pk": "1"}, "app.views.detail"),
    (None, {"pk": 1}, "app.views.detail"),
    (["category"], {"category": 3, "page": 2}, "app.views.listing"),
    ({"kind": "fmt"}, {"fmt": "atom"}, None),
    ("news", {}, None),
    (
        None,
        {
            "id": uuid.UUID(int=7),
            "price": decimal.Decimal("9.90"),
            "day": datetime.date(2024, 2, 29),
            "flag": True,
            "nothing": None,
            "text": "é ü ☃",
        },
        "app.views.everything",
    ),
]

_tokens = itertools.count()


@cache_page_against_model(AuthGroup)
def group_name_page(request: HttpRequest, pk: str) -> HttpResponse:
    """The group's name, the pid that rendered it and a token unique to the
    rendering (a cached page repeats both)."""
    group = AuthGroup.objects.get(pk=pk)
    return HttpResponse(f"{group.name}|{os.getpid()}|{next(_tokens)}")


def render(pk: int) -> str:
    from django.test import RequestFactory

    request = RequestFactory().get(f"/groups/{pk}/")
    return str(group_name_page(request, pk=str(pk)).content.decode())


def local_keys(index: int) -> tuple[list[str], str, int]:
    keys = [get_local_key(group, keywords, name) for group, keywords, name in CASES]
    return keys, Group("catalog", category=3).local_key, hash("syncache")


def test_local_keys_are_the_same_in_every_process() -> None:
    """Spawned workers have their own str hash seed (unless PYTHONHASHSEED
    pins it): the keys must not depend on it."""
    expected = [get_local_key(group, keywords, name) for group, keywords, name in CASES]
    results = run_in_processes(local_keys, 2, settings_overrides=None)
    for keys, object_key, _ in results:
        assert keys == expected
        assert object_key == Group("catalog", category=3).local_key
    assert len(set(expected)) == len(expected) - 1, "only '1' and 1 coincide"
    if not os.environ.get("PYTHONHASHSEED"):
        seeds = {hash("syncache")} | {seed for _, _, seed in results}
        assert len(seeds) > 1, "the workers hashed str like this process"


def render_around_a_change(index: int, barrier: Any, pk: int) -> dict[str, Any]:
    """Render the page twice, wait for the parent's change, render twice."""
    before = [render(pk), render(pk)]
    barrier.wait()  # every process has the old page
    barrier.wait()  # the parent committed its change
    after = [render(pk), render(pk)]
    return {"before": before, "after": after, "pid": os.getpid()}


@pytest.mark.django_db(transaction=True)
def test_page_against_model_is_fresh_in_every_process(shared_backend: Backend) -> None:
    group = AuthGroup.objects.create(name="before")
    old_page = render(group.pk)
    assert old_page.startswith(f"before|{os.getpid()}|")
    barrier = make_barrier(WORKERS + 1)
    with start_processes(
        render_around_a_change,
        WORKERS,
        barrier,
        group.pk,
        settings_overrides=shared_backend.settings_overrides,
    ) as workers:
        barrier.wait()
        with transaction.atomic():
            group.name = "after"
            group.save()
        barrier.wait()
        results = workers.join()
    for result in results:
        assert result["before"] == [old_page, old_page], "this process's page, shared"
        for page in result["after"]:
            assert page.startswith("after|"), result
    assert render(group.pk).startswith("after|")
