"""The pages app of the syncache example site."""

from __future__ import annotations

from django.apps import AppConfig


class PagesConfig(AppConfig):
    name = "pages"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Connects the navigation's invalidation to page changes, in every
        # process, whether or not a view has imported it yet.
        from pages import navigation  # noqa: F401
