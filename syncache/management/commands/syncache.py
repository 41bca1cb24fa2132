"""``manage.py syncache``: inspect and invalidate syncache's shared state.

Subcommands:

``status [--json]``
    Every ``LocalSyncCache`` and every other live ``GenerationSynchronizer``
    of this process, with the generation stored in the shared cache (one
    round trip per cache alias) next to the one held here.
``bump ID [ID ...]``
    Clear the ``LocalSyncCache`` ids and bump the synchronizer keys given,
    in every process. Nothing is done when one of them is unknown.
``clear-all``
    Clear every ``LocalSyncCache`` id and bump every synchronizer key.

The command sees only the instances that exist in its own process: those
created when Django loaded the apps (models are imported by
``django.setup()``) and by the modules those import.
"""

from __future__ import annotations

import json
import textwrap
from argparse import RawDescriptionHelpFormatter
from collections.abc import Iterable, Sequence
from typing import Any

from django.core.cache import InvalidCacheBackendError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from syncache.local import LocalSyncCache, caches_by_id
from syncache.status import (
    Invalidation,
    bump_synchronizer_key,
    clear_local_caches,
    listed_synchronizers,
    status_report,
)
from syncache.synchronizer import GenerationSynchronizer

REGISTRY_NOTE = (
    "Only the instances that exist in this command's own process are seen: "
    "those created while Django loaded the apps (django.setup() imports every "
    "models module) and by the modules those import. A LocalSyncCache or "
    "GenerationSynchronizer created in a module that is imported only by "
    "views, URLconfs or tasks is not known here: import that module from a "
    "models module or an AppConfig.ready() to make it known. The generations "
    "stored in the shared cache are the same for every process; what is "
    "'held' is this process's view (instances created while the apps load "
    "hold none until they are first checked)."
)

HELP = (
    "Show and invalidate syncache state: 'status' lists every LocalSyncCache "
    "and GenerationSynchronizer with the generation stored in the shared "
    "cache; 'bump ID [ID ...]' invalidates some of them in every process; "
    "'clear-all' invalidates all of them. " + REGISTRY_NOTE
)


def _description(*paragraphs: str) -> str:
    """Paragraphs wrapped for ``RawDescriptionHelpFormatter``."""
    return "\n\n".join(textwrap.fill(p, width=79) for p in paragraphs)


def _shown_generation(value: Any, status: str) -> str:
    return f"({status})" if status != "stored" else str(value)


def _shown_held(value: Any) -> str:
    return "-" if value is None else str(value)


def _shown_ago(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.3f}s ago"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Align ``rows`` under ``headers``: numbers right, text left."""
    body = [list(row) for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    numeric = [
        bool(body) and all(_is_number(row[i]) for row in body)
        for i in range(len(headers))
    ]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(cells, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return [line(headers), *(line(row) for row in body)]


def _is_number(cell: str) -> bool:
    return cell.lstrip("-").isdigit()


class Command(BaseCommand):
    """``manage.py syncache {status,bump,clear-all}``."""

    help = HELP
    # A diagnostic and repair tool: it must work when an unrelated check
    # fails, and the syncache checks would only repeat what status shows.
    requires_system_checks: tuple[str, ...] = ()

    def add_arguments(self, parser: CommandParser) -> None:
        """Add the ``status``, ``bump`` and ``clear-all`` subcommands."""
        subparsers = parser.add_subparsers(
            dest="subcommand",
            metavar="{status,bump,clear-all}",
            required=True,
            title="subcommands",
        )
        status = subparsers.add_parser(
            "status",
            help="List LocalSyncCaches and synchronizers with their generations.",
            description=_description(
                "List every LocalSyncCache (id, generation stored in the "
                "shared cache, generation held here, current or expired, "
                "length, counters, last check and clear) and every other "
                "GenerationSynchronizer (key, stored and held generation), "
                "and the cache alias and backend used.",
                REGISTRY_NOTE,
            ),
            formatter_class=RawDescriptionHelpFormatter,
        )
        status.add_argument(
            "--json",
            action="store_true",
            dest="as_json",
            help="Print JSON instead of tables. A generation that is missing "
            "or unreadable is null, with generation_status saying which.",
        )
        bump = subparsers.add_parser(
            "bump",
            help="Invalidate LocalSyncCache ids / synchronizer keys everywhere.",
            description=_description(
                "For each LocalSyncCache id, clear() one instance of it: every "
                "process empties its instances of that id at its next check. "
                "For each synchronizer cache key, write a new generation: "
                "every holder, in every process, is expired. Nothing is done "
                "when one of the ids is unknown.",
                REGISTRY_NOTE,
            ),
            formatter_class=RawDescriptionHelpFormatter,
        )
        bump.add_argument(
            "ids",
            nargs="+",
            metavar="ID",
            help="A LocalSyncCache id or a synchronizer cache key, as 'status' "
            "shows them.",
        )
        subparsers.add_parser(
            "clear-all",
            help="Invalidate every LocalSyncCache and synchronizer everywhere.",
            description=_description(
                "Clear every LocalSyncCache id (once per id and cache alias) "
                "and bump every synchronizer key listed by 'status'.",
                REGISTRY_NOTE,
            ),
            formatter_class=RawDescriptionHelpFormatter,
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the subcommand."""
        subcommand = options["subcommand"]
        try:
            if subcommand == "status":
                self.status(as_json=options["as_json"])
            elif subcommand == "bump":
                self.bump(options["ids"], verbosity=options["verbosity"])
            elif subcommand == "clear-all":
                self.clear_all(verbosity=options["verbosity"])
            else:  # pragma: no cover - argparse refuses other values
                raise CommandError(f"Unknown subcommand {subcommand!r}.")
        except InvalidCacheBackendError as exc:
            raise CommandError(f"A cache alias is not configured: {exc}") from exc

    # -- status -------------------------------------------------------------

    def status(self, *, as_json: bool) -> None:
        """Print the status report, as tables or as JSON."""
        report = status_report()
        if as_json:
            self.stdout.write(json.dumps(report, indent=2, default=repr))
            return
        for medium in report["media"]:
            capabilities = medium["capabilities"]
            flags = ", ".join(
                f"{name}={'yes' if value else 'no'}"
                for name, value in capabilities.items()
            )
            default = " (SYNCACHE CACHE_ALIAS)" * (
                medium["alias"] == report["cache_alias"]
            )
            self.stdout.write(
                f"Cache {medium['alias']!r}{default}: {medium['backend']} "
                f"through {medium['medium']}"
            )
            self.stdout.write(f"  capabilities: {flags}")
            self.stdout.write(f"  checks: {medium['checks']}")
        self.stdout.write(f"Key prefix: {report['key_prefix']}")
        several_aliases = len(report["media"]) > 1
        self._local_table(report["local_caches"], several_aliases)
        self._synchronizer_table(report["synchronizers"], several_aliases)

    def _local_table(self, rows: list[dict[str, Any]], with_alias: bool) -> None:
        self.stdout.write("")
        self.stdout.write(
            self.style.MIGRATE_HEADING(f"LocalSyncCache instances: {len(rows)}")
        )
        if not rows:
            self.stdout.write(
                "  (none in this process; see 'manage.py syncache --help')"
            )
            return
        headers = ["ID", "GENERATION", "HELD", "STATE", "LEN"]
        headers += ["REQUEST", "OWN_CLEAR", "EXT_CLEAR", "STALE_CLEAR"]
        headers += ["CHECKED", "CLEARED"]
        if with_alias:
            headers.append("ALIAS")
        table = []
        for row in rows:
            cells = [
                row["id"],
                _shown_generation(row["generation"], row["generation_status"]),
                _shown_held(row["sync_gen"]),
                row["state"],
                str(row["length"]),
                str(row["request_counter"]),
                str(row["own_clear_counter"]),
                str(row["ext_clear_counter"]),
                str(row["stale_clear_counter"]),
                _shown_ago(row["last_checked"]),
                _shown_ago(row["last_cleared"]),
            ]
            if with_alias:
                cells.append(row["alias"])
            table.append(cells)
        for line in format_table(headers, table):
            self.stdout.write(line)

    def _synchronizer_table(self, rows: list[dict[str, Any]], with_alias: bool) -> None:
        self.stdout.write("")
        self.stdout.write(
            self.style.MIGRATE_HEADING(f"GenerationSynchronizers: {len(rows)}")
        )
        if not rows:
            self.stdout.write("  (none in this process besides the LocalSyncCaches')")
            return
        headers = ["CACHE_KEY", "GENERATION", "HELD", "STATE"]
        if with_alias:
            headers.append("ALIAS")
        table = []
        for row in rows:
            cells = [
                row["cache_key"],
                _shown_generation(row["generation"], row["generation_status"]),
                _shown_held(row["sync_gen"]),
                row["state"],
            ]
            if with_alias:
                cells.append(row["alias"])
            table.append(cells)
        for line in format_table(headers, table):
            self.stdout.write(line)

    # -- bump and clear-all -------------------------------------------------------

    def bump(self, ids: Sequence[str], *, verbosity: int = 1) -> None:
        """Invalidate the given ids; refuse them all if one is unknown."""
        wanted = list(dict.fromkeys(ids))
        local = caches_by_id(wanted)
        syncs: dict[str, list[GenerationSynchronizer]] = {}
        for sync in listed_synchronizers():
            syncs.setdefault(sync.cache_key, []).append(sync)
        unknown = [i for i in wanted if i not in local and i not in syncs]
        if unknown:
            raise CommandError(self._unknown_message(unknown, syncs))
        failures: list[str] = []
        for name in wanted:
            if name in local:
                failures += self._clear_local(name, local[name], verbosity)
            if name in syncs:
                failures += self._bump_key(name, syncs[name], verbosity)
        self._finish(failures)

    def clear_all(self, *, verbosity: int = 1) -> None:
        """Clear every LocalSyncCache id and bump every synchronizer key."""
        local: dict[str, list[LocalSyncCache]] = {}
        for cache in LocalSyncCache.CACHES:
            local.setdefault(cache.id, []).append(cache)
        syncs: dict[str, list[GenerationSynchronizer]] = {}
        for sync in listed_synchronizers():
            syncs.setdefault(sync.cache_key, []).append(sync)
        failures: list[str] = []
        for name, instances in local.items():
            failures += self._clear_local(name, instances, verbosity - 1)
        for key, holders in syncs.items():
            failures += self._bump_key(key, holders, verbosity - 1)
        self.stdout.write(
            self.style.SUCCESS(
                f"Cleared {len(local)} LocalSyncCache id(s) and bumped "
                f"{len(syncs)} synchronizer key(s)."
            )
        )
        self._finish(failures)

    def _clear_local(
        self, name: str, instances: list[LocalSyncCache], verbosity: int
    ) -> list[str]:
        """``clear()`` one instance of ``name`` per cache alias."""
        return self._report(
            clear_local_caches(instances), "clear", "Cleared", verbosity
        )

    def _bump_key(
        self, key: str, holders: list[GenerationSynchronizer], verbosity: int
    ) -> list[str]:
        """``mark_updated()`` on a new holder of ``key``, per cache alias."""
        done = bump_synchronizer_key(key, (h.cache_alias for h in holders))
        return self._report(done, "bump", "Bumped", verbosity)

    def _report(
        self, done: list[Invalidation], verb: str, past: str, verbosity: int
    ) -> list[str]:
        """Print each invalidation; return the failed ones."""
        failures = []
        for item in done:
            if item.failed:
                failures.append(item.describe())
                self.stdout.write(
                    self.style.WARNING(
                        f"Could not {verb} {item.label}: cache {item.alias!r} failed "
                        f"(see the 'syncache' log)."
                    )
                )
            elif verbosity >= 1:
                self.stdout.write(
                    self.style.SUCCESS(
                        f"{past} {item.describe()}: generation {item.generation}."
                    )
                )
        return failures

    @staticmethod
    def _finish(failures: list[str]) -> None:
        if failures:
            raise CommandError(
                f"{len(failures)} invalidation(s) failed: {', '.join(failures)}."
            )

    @staticmethod
    def _unknown_message(
        unknown: list[str], syncs: dict[str, list[GenerationSynchronizer]]
    ) -> str:
        local_ids = sorted(dict.fromkeys(cache.id for cache in LocalSyncCache.CACHES))
        message = (
            f"Unknown id(s): {', '.join(map(repr, unknown))}. Nothing was "
            f"bumped.\nKnown LocalSyncCache ids: "
            f"{', '.join(map(repr, local_ids)) or '(none)'}\n"
            f"Known synchronizer keys: "
            f"{', '.join(map(repr, sorted(syncs))) or '(none)'}"
        )
        if not local_ids and not syncs:
            message += (
                "\nThis process knows no instance: they are created when the "
                "modules defining them are imported (see --help)."
            )
        return message
