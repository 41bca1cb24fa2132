"""Model integration: clear caches and bump synchronizers on commit.

:func:`clear_on_change` connects a target (a ``LocalSyncCache``, a
``GenerationSynchronizer`` or any callable) to ``post_save``,
``post_delete`` and ``m2m_changed`` of some models. The target is
invalidated when the transaction that changed the rows commits (at once
when there is none), and not at all when it rolls back: before the commit
other processes would only reload the old rows.

``QuerySet.update()``, ``bulk_create()`` and ``bulk_update()`` send no
signals; call :func:`invalidate_on_commit` after them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from django.apps import apps
from django.db import models
from django.db.models.signals import m2m_changed, post_delete, post_save

from syncache.local import LocalSyncCache, on_commit_once
from syncache.synchronizer import GenerationSynchronizer

Target = LocalSyncCache | GenerationSynchronizer | Callable[[], object]

TargetT = TypeVar("TargetT", bound=Target)

#: The ``m2m_changed`` actions after which the rows have changed.
M2M_ACTIONS = frozenset({"post_add", "post_remove", "post_clear"})


def invalidate(target: Target) -> None:
    """Invalidate ``target`` now, in every process."""
    if isinstance(target, LocalSyncCache):
        target.clear()
    elif isinstance(target, GenerationSynchronizer):
        target.mark_updated()
    elif callable(target):
        target()
    else:
        raise TypeError(
            f"Cannot invalidate {target!r}: pass a LocalSyncCache, a "
            f"GenerationSynchronizer or a callable."
        )


class _Invalidation:
    """The on-commit callback for one target; equal for the same target, so
    :func:`~syncache.local.on_commit_once` schedules it once per commit."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def __call__(self) -> None:
        invalidate(self.target)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Invalidation) and other.target is self.target

    def __hash__(self) -> int:
        return id(self.target)


def invalidate_on_commit(*targets: Target, using: str | None = None) -> None:
    """Invalidate ``targets`` when the current transaction on ``using`` commits.

    At once outside a transaction; never if it rolls back; once per target
    however many times it is asked within one transaction. Call it after
    ``QuerySet.update()``, ``bulk_create()`` or ``bulk_update()``.
    """
    for target in targets:
        _check_target(target)
        on_commit_once(_Invalidation(target), using)


def _invalidate_now_and_on_commit(target: Target, using: str | None) -> None:
    """A row changed: drop this process's copy now, everyone's on commit."""
    if isinstance(target, LocalSyncCache):
        target.clear_locally()
    invalidate_on_commit(target, using=using)


def _check_target(target: object) -> None:
    if not isinstance(target, (LocalSyncCache, GenerationSynchronizer)) and not (
        callable(target)
    ):
        raise TypeError(
            f"{target!r} cannot be invalidated: pass a LocalSyncCache, a "
            f"GenerationSynchronizer or a callable."
        )


def model_label(model: type[models.Model] | str) -> tuple[str, str]:
    """Return ``(app_label, model_name)`` for a model class or label string.

    Raises:
        TypeError: neither a model class nor a string.
        ValueError: a string that is not ``"app_label.ModelName"``.
    """
    if isinstance(model, str):
        try:
            app_label, model_name = model.split(".")
        except ValueError:
            raise ValueError(
                f"Name models as 'app_label.ModelName', not {model!r}."
            ) from None
        return app_label, model_name.lower()
    if isinstance(model, type) and issubclass(model, models.Model):
        return model._meta.app_label, model._meta.model_name or ""
    raise TypeError(f"Expected a model class or 'app_label.ModelName', not {model!r}.")


def when_model_ready(
    model: type[models.Model] | str,
    connect: Callable[[type[models.Model]], object],
) -> None:
    """Run ``connect(model_class)`` once the app registry has the model."""
    apps.lazy_model_operation(connect, model_label(model))


def clear_on_change(target: TargetT, *models_: type[models.Model] | str) -> TargetT:
    """Invalidate ``target`` on commit whenever rows of ``models_`` change.

    Models may be classes or ``"app_label.ModelName"`` strings (so a cache
    declared in a model's own class body can name its model); they are
    connected once the app registry has them. Returns ``target``, so it can
    wrap a declaration::

        _url_cache = clear_on_change(LocalSyncCache("urls"), "pages.Page")

    Raises:
        TypeError: ``target`` cannot be invalidated, or a model is neither a
            class nor a string.
        ValueError: a model string is not ``"app_label.ModelName"``.
    """
    _check_target(target)
    if not models_:
        raise ValueError("clear_on_change() needs at least one model.")
    for model in models_:
        when_model_ready(model, partial(_connect, target))
    return target


def on_model_change(
    model: type[models.Model], uid: str, callback: Callable[[str | None], object]
) -> None:
    """Call ``callback(using)`` when rows of ``model`` are saved, deleted, or
    gain or lose many-to-many links (from either side of the relation).

    ``uid`` makes the connections idempotent (``dispatch_uid``); receivers
    are held strongly, for the life of the process.
    """

    def changed(sender: Any, using: str | None = None, **kwargs: Any) -> None:
        callback(using)

    def m2m(
        sender: Any,
        instance: Any,
        action: str,
        model: type[models.Model],
        using: str | None = None,
        **kwargs: Any,
    ) -> None:
        if action in M2M_ACTIONS and (
            isinstance(instance, watched) or issubclass(model, watched)
        ):
            callback(using)

    watched = model
    post_save.connect(changed, sender=model, weak=False, dispatch_uid=uid + ":save")
    post_delete.connect(changed, sender=model, weak=False, dispatch_uid=uid + ":delete")
    m2m_changed.connect(m2m, weak=False, dispatch_uid=uid + ":m2m")


def _connect(target: Target, model: type[models.Model]) -> None:
    on_model_change(
        model,
        f"syncache:{id(target)}:{model._meta.label}",
        partial(_invalidate_now_and_on_commit, target),
    )
