"""``manage.py refresh_report``: recompute the site report (for cron).

Run it from the crontab of every server: only one of them does the work
(at most once a minute); the others say so and exit.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from pages.reports import refresh_report


class Command(BaseCommand):
    help = "Recompute the site report, unless another process is or just did."

    def handle(self, *args: Any, **options: Any) -> None:
        report = refresh_report()
        if report is None:
            self.stdout.write("Another process is refreshing the report, or just did.")
            return
        self.stdout.write(
            "Report refreshed: "
            + ", ".join(f"{name} {value}" for name, value in report.items())
        )
