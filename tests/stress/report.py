"""The figures of a stress run: collected by the tests, printed as one table.

Each test that measures something adds a :class:`Figure`; the suite's
``conftest.py`` prints them at the end of the pytest run, and writes them
as JSON to ``$SYNCACHE_STRESS_REPORT`` when it is set (``python -m
tests.stress`` does, and prints the table again from that file). Figures
are reported, never asserted: the tests assert the contract (no stale read,
no exception), not speed.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

#: Where the figures go as JSON, when set.
REPORT_ENV = "SYNCACHE_STRESS_REPORT"


@dataclass(frozen=True)
class Figure:
    """One line of the table."""

    #: What ran: "model", "kill + restart", "SIGSTOP", "FLUSHALL"...
    scenario: str
    backend: str
    #: Operations checked (reads and updates, all processes).
    operations: int
    #: Reads that returned a version older than an update committed before
    #: their check began (for a fault: in the phases after recovery).
    stale_reads: int
    #: Faults injected, as text ("2 x kill", "-").
    faults: str
    #: Exceptions that reached the calling code.
    exceptions: int
    #: How the processes recovered, as text ("1st check, 4 ms").
    recovery: str
    #: Anything else worth a number (latency, evictions...).
    notes: str = ""


FIGURES: list[Figure] = []


def record(figure: Figure) -> Figure:
    """Add ``figure`` to the run's table."""
    FIGURES.append(figure)
    return figure


_HEADERS = {
    "scenario": "scenario",
    "backend": "backend",
    "operations": "operations",
    "stale_reads": "stale reads",
    "faults": "faults injected",
    "exceptions": "exceptions",
    "recovery": "recovery",
    "notes": "notes",
}


def table(figures: list[Figure] | list[dict[str, object]]) -> str:
    """The figures as a plain-text table."""
    rows = [f if isinstance(f, dict) else asdict(f) for f in figures]
    names = [field.name for field in fields(Figure)]
    cells = [[_HEADERS[name] for name in names]]
    cells += [
        [
            f"{row[name]:,}" if isinstance(row[name], int) else str(row[name])
            for name in names
        ]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(names))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        for line in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def write_json(path: str | os.PathLike[str]) -> None:
    """Write the run's figures (and the mode) as JSON to ``path``."""
    from tests.stress.sizes import MODE

    Path(path).write_text(
        json.dumps({"mode": MODE, "figures": [asdict(f) for f in FIGURES]}, indent=2)
    )


__all__ = ["FIGURES", "REPORT_ENV", "Figure", "record", "table", "write_json"]
