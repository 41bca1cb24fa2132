"""The stress suite's table: printed after the run, written as JSON on demand.

The fixtures the suite uses come from ``tests/conftest.py`` (the backend
matrix, isolated servers) and ``tests/stress/servers.py``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.stress.report import FIGURES, REPORT_ENV, table, write_json
from tests.stress.sizes import MODE


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section(f"syncache stress figures ({MODE} mode)")
    terminalreporter.write_line(table(FIGURES))


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get(REPORT_ENV)
    if path:
        write_json(path)
