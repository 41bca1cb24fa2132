"""Model hooks: invalidate on commit, never on rollback (promise 4)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import transaction

from syncache import (
    GenerationSynchronizer,
    LocalSyncCache,
    check_all,
    clear_on_change,
    invalidate_on_commit,
)

pytestmark = [
    pytest.mark.usefixtures("backend"),
    pytest.mark.django_db(transaction=True),
]


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


@pytest.fixture
def counter() -> Counter:
    return clear_on_change(Counter(), Group)  # type: ignore[return-value]


def test_save_outside_a_transaction_invalidates_at_once(counter: Counter) -> None:
    Group.objects.create(name="a")
    assert counter.calls == 1


def test_save_in_a_transaction_invalidates_on_commit(counter: Counter) -> None:
    with transaction.atomic():
        group = Group.objects.create(name="a")
        group.name = "b"
        group.save()
        assert counter.calls == 0, "not before the commit"
    assert counter.calls == 1, "once per transaction, however many saves"


def test_rollback_invalidates_nothing(counter: Counter) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        Group.objects.create(name="a")
        raise RuntimeError
    assert counter.calls == 0


def test_delete_and_m2m_changes(counter: Counter) -> None:
    group = Group.objects.create(name="a")
    permission = Permission.objects.first()
    assert permission is not None
    group.permissions.add(permission)
    assert counter.calls == 2
    permission.group_set.remove(group)
    assert counter.calls == 3, "the reverse side of the m2m counts too"
    group.permissions.clear()
    assert counter.calls == 4
    group.delete()
    assert counter.calls >= 5


def test_model_named_by_label() -> None:
    counter = clear_on_change(Counter(), "auth.Group")
    Group.objects.create(name="a")
    assert counter.calls == 1  # type: ignore[union-attr]


def test_synchronizer_and_local_cache_targets(monkeypatch: Any) -> None:
    sync = clear_on_change(GenerationSynchronizer("groups"), Group)
    holder = GenerationSynchronizer("groups")
    cache = LocalSyncCache(id="groups-by-name", unique_ids=False)
    other = LocalSyncCache(id="groups-by-name", unique_ids=False)
    clear_on_change(cache, Group)
    check_all()
    other["a"] = 1
    Group.objects.create(name="a")
    assert holder.is_expired()
    assert not sync.is_expired()  # type: ignore[union-attr]
    check_all()
    assert other == {}


def test_queryset_update_with_invalidate_on_commit(counter: Counter) -> None:
    Group.objects.create(name="a")
    sync = GenerationSynchronizer("update")
    holder = GenerationSynchronizer("update")
    with transaction.atomic():
        Group.objects.update(name="b")
        invalidate_on_commit(sync)
        assert not holder.is_expired()
    assert holder.is_expired()


@pytest.mark.parametrize(
    ("target", "models", "error", "message"),
    [
        (42, (Group,), TypeError, "cannot be invalidated"),
        (Counter(), (), ValueError, "at least one model"),
        (Counter(), ("auth",), ValueError, "app_label.ModelName"),
        (Counter(), (int,), TypeError, "model class"),
    ],
)
def test_bad_arguments(target: Any, models: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        clear_on_change(target, *models)
    with pytest.raises(TypeError, match="cannot be invalidated"):
        invalidate_on_commit(object())  # type: ignore[arg-type]
