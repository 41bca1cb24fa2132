"""The navigation bar: the top-level pages, computed once for all processes.

It lives in the shared cache as an entry of a generational group. Any
committed change to a page moves the group to a new version, and every
process's next read misses and recomputes it: one write invalidates it
everywhere, however many entries the group holds.
"""

from __future__ import annotations

from typing import TypedDict

from pages.models import PageTree
from syncache import Group, clear_on_change


class Link(TypedDict):
    title: str
    url: str


NAVIGATION = Group("navigation")
clear_on_change(NAVIGATION.bump, PageTree)


def navigation() -> list[Link]:
    """The links of the navigation bar (one read of the shared cache)."""
    return NAVIGATION.get_or_set("top-level", _top_level_links, 3600)


def _top_level_links() -> list[Link]:
    return [
        {"title": page.title, "url": page.get_absolute_url()}
        for page in PageTree.objects.filter(parent=None)
    ]
