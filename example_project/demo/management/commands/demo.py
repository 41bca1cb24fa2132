"""``manage.py demo``: the example site under gunicorn, several processes,
with syncache and without.

It migrates a fresh database in a temporary directory, starts gunicorn with
``--workers`` processes, reads through every worker, updates through one,
and reads again through every worker (see :mod:`demo.run`); then the same
with syncache switched off. It prints, per worker, whether its first read
after each update was fresh, how soon the new value was served, and how
many requests each request sent to the shared cache. It exits with status
1 if any worker served stale data with syncache on.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import socket
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from demo.progress import Progress
from demo.run import STALE_WINDOW, DemoError, Run, Site, run
from example.settings import cache_from_url


class Command(BaseCommand):
    help = (
        "Run the example site under gunicorn with several worker processes, "
        "change data through one and read it through all, with syncache and "
        "without. Exits with status 1 if a worker served stale data with "
        "syncache on."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--workers", type=int, default=4, help="gunicorn workers (default 4)"
        )
        parser.add_argument(
            "--rounds",
            type=int,
            default=3,
            help="updates, each through another worker (default 3)",
        )
        parser.add_argument(
            "--cache",
            default=os.environ.get("SYNCACHE_DEMO_CACHE", ""),
            metavar="URL",
            help="coordinate through redis://HOST:PORT/DB or memcached://HOST:PORT "
            "instead of the SQLite database cache (default: $SYNCACHE_DEMO_CACHE)",
        )
        parser.add_argument(
            "--json", metavar="PATH", help="also write the results to PATH as JSON"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        workers: int = options["workers"]
        rounds: int = options["rounds"]
        cache_url: str = options["cache"]
        if workers < 2:
            raise CommandError(
                "--workers must be at least 2: one makes the change, the others "
                "must see it."
            )
        if rounds < 1:
            raise CommandError("--rounds must be at least 1.")
        described = _check_cache(cache_url)
        if importlib.util.find_spec("gunicorn") is None:
            raise CommandError(
                "gunicorn is not installed. From the repository root: "
                "pip install -e '.[demo]'"
            )
        self.stdout.write(
            f"syncache demo: the example site under gunicorn, {workers} worker "
            f"processes, {_plural(rounds, 'round')}\n"
            f"coordination cache: {described}\n"
        )
        self.stdout.flush()
        progress = Progress(sys.stdout)
        with tempfile.TemporaryDirectory(prefix="syncache-demo-") as data_dir:
            site = Site(Path(settings.BASE_DIR), Path(data_dir), cache_url)
            try:
                with progress.step("Creating the database"):
                    site.create_database()
                runs = [
                    run(site, workers, rounds, syncache=on, step=progress.step)
                    for on in (True, False)
                ]
            except DemoError as error:
                raise CommandError(f"The demo could not run: {error}") from error
        on, off = runs
        self.stdout.write("")
        self._report(on)
        self._report(off)
        if options["json"]:
            results = {
                "cache": cache_url or "sqlite",
                "workers": workers,
                "rounds": rounds,
                "stale_window": STALE_WINDOW,
                "runs": [dataclasses.asdict(r) for r in runs],
            }
            Path(options["json"]).write_text(json.dumps(results, indent=2) + "\n")
        self._verdict(on, off)

    def _report(self, result: Run) -> None:
        if result.syncache:
            self.stdout.write("With syncache:")
        else:
            self.stdout.write(
                "Without syncache (each process sees only its own changes):"
            )
        header = (
            "worker",
            "first read after an update",
            "new value served",
            "round trips to the shared cache",
        )
        rows = [header]
        for pid in result.pids:
            mine = [w for r in result.rounds for w in r.workers if w.pid == pid]
            fresh = sum(w.fresh for w in mine)
            stale = len(mine) - fresh
            updates = sum(w.updated for w in mine)
            first = f"fresh {fresh}/{len(mine)}" + (
                f", stale {stale}/{len(mine)}" if stale else ""
            )
            if updates:
                first += f" (made {_plural(updates, 'update')})"
            delays = [w.fresh_after for w in mine]
            if any(delay is None for delay in delays):
                served = f"still stale after {STALE_WINDOW:g} s"
            else:
                served = f"within {max(d or 0 for d in delays) * 1000:.0f} ms"
            trips = (
                f"{_span(w.round_trips_before for w in mine)} per request, "
                f"{_span(w.round_trips_after for w in mine)} just after an update"
            )
            rows.append((str(pid), first, served, trips))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        for row in rows:
            cells = [row[i].ljust(widths[i]) for i in range(3)]
            self.stdout.write("  " + "  ".join([*cells, row[3]]).rstrip())
        for number, worker in result.stale_reads()[:1]:
            expected = next(r.expected for r in result.rounds if r.number == number)
            self.stdout.write(
                f"  For example, in round {number} worker {worker.pid} served\n"
                f"    {'; '.join(worker.stale)}\n"
                f"  instead of\n"
                f"    url {expected.url}; site name {expected.site_name!r}"
            )
        self.stdout.write("")

    def _verdict(self, on: Run, off: Run) -> None:
        reads = sum(len(r.workers) for r in on.rounds)
        stale_on, stale_off = on.stale_reads(), off.stale_reads()
        not_held = on.not_held()
        if not_held:
            raise CommandError(
                f"{len(not_held)} worker(s) did not serve the page's URL from "
                f"memory before an update, so the demo proves nothing about "
                f"them: {', '.join(f'round {n} worker {w.pid}' for n, w in not_held)}"
            )
        if stale_on:
            raise CommandError(
                f"With syncache, {len(stale_on)} of {reads} first reads after an "
                f"update were stale: "
                + ", ".join(f"round {n} worker {w.pid}" for n, w in stale_on)
            )
        slowest = max(
            w.fresh_after or 0 for r in on.rounds for w in r.workers if w.fresh
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"With syncache, all {reads} first reads after an update were "
                f"fresh (the new value within {slowest * 1000:.0f} ms of the "
                f"update's answer)."
            )
        )
        self.stdout.write(
            f"Without it, {len(stale_off)} of {reads} "
            f"{'was' if len(stale_off) == 1 else 'were'} stale"
            + (
                ": each process served its old copy until it changed the data itself."
                if stale_off
                else "."
            )
        )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _span(values: Iterable[int]) -> str:
    """``"3"``, or ``"3-5"`` when the values differ."""
    found = sorted(set(values))
    return str(found[0]) if len(found) == 1 else f"{found[0]}-{found[-1]}"


def _check_cache(url: str) -> str:
    """Check the cache URL and that its server answers; describe it."""
    try:
        config = cache_from_url(url)
    except ImproperlyConfigured as error:
        raise CommandError(f"--cache: {error}") from error
    if not url:
        return "SQLite database cache in the site's database (no server)"
    parts = urlsplit(url)
    library = "redis" if parts.scheme == "redis" else "pymemcache"
    if importlib.util.find_spec(library) is None:
        raise CommandError(
            f"{url} needs the {library} package. From the repository root: "
            f"pip install -e '.[demo]'"
        )
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (6379 if parts.scheme == "redis" else 11211)
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as error:
        raise CommandError(
            f"Cannot reach {url} ({error}): start the server, or run the demo "
            f"without --cache to use the embedded SQLite database cache."
        ) from error
    return f"{config['BACKEND'].rsplit('.', 1)[-1]} at {url}"
