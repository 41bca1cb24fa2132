"""An expensive report, computed by one process at a time.

:func:`get_report` serves it from the shared cache. When it is older than
``REPORT_FRESH_FOR`` seconds, one request (in all processes) recomputes it
while the others keep getting the previous one at once: no stampede.

:func:`refresh_report` is the job a crontab runs on every server: a spin
lock in the shared cache lets only one of them do the work at a time.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TypedDict

from pages.models import PageTree
from syncache import dogpile, get_or_create
from syncache.spinlock import FailIfKeyExistsIsEnabled, HashDSpinlock

REPORT_KEY = "site-report"
#: Seconds the report is served without being recomputed.
REPORT_FRESH_FOR = 300


class Report(TypedDict):
    pages: int
    top_level: int
    deepest: int
    words: int


def build_report() -> Report:
    """Walk every page: on a large site, this takes a while."""
    pages = {page.pk: page for page in PageTree.objects.all()}

    def depth(page: PageTree) -> int:
        parent = pages.get(page.parent_id) if page.parent_id else None
        return 1 if parent is None else 1 + depth(parent)

    return {
        "pages": len(pages),
        "top_level": sum(page.parent_id is None for page in pages.values()),
        "deepest": max(map(depth, pages.values()), default=0),
        "words": sum(len(page.body.split()) for page in pages.values()),
    }


def get_report() -> Report:
    """The report, recomputed by one process when it has gone stale."""
    return get_or_create(REPORT_KEY, build_report, REPORT_FRESH_FOR)


class RefreshReportLock(HashDSpinlock):
    """The job's lock: held while it runs, then "computed" for a minute, so
    the crontabs of every server run it once a minute at most."""

    expire_at_timedelta = timedelta(minutes=1)
    max_block_time = timedelta(minutes=10)


def refresh_report() -> Report | None:
    """Recompute the report now, unless another process is doing it or did
    it less than a minute ago.

    Returns:
        The new report, or None when another process has the job in hand.
    """
    try:
        with RefreshReportLock("refresh-report", fail_if_key_exists=True):
            # Stale, not deleted: requests keep the old report until it is
            # replaced.
            dogpile.invalidate(REPORT_KEY)
            return get_report()
    except FailIfKeyExistsIsEnabled:
        return None
