"""Run the whole reliability suite in full mode and print its table.

    python -m tests.stress [--small] [--json PATH] [pytest arguments...]

It runs ``pytest tests/stress`` with ``SYNCACHE_STRESS=full`` (``--small``:
the CI sizes) and every backend required (``SYNCACHE_TEST_REQUIRE=all``
unless already set), writes the figures as JSON (default
``$TMPDIR/syncache-stress-results.json``), and prints them as the table that
docs/reliability.rst publishes. The exit status is pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.stress.report import REPORT_ENV, table
from tests.stress.sizes import MODE_ENV

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stress", description=__doc__)
    parser.add_argument("--small", action="store_true", help="the CI sizes")
    parser.add_argument(
        "--json",
        default=str(Path(tempfile.gettempdir()) / "syncache-stress-results.json"),
        help="where the figures go (default: %(default)s)",
    )
    options, pytest_args = parser.parse_known_args(argv)
    report = Path(options.json).resolve()
    env = dict(os.environ)
    env[MODE_ENV] = "small" if options.small else "full"
    env[REPORT_ENV] = str(report)
    env.setdefault("SYNCACHE_TEST_REQUIRE", "all")
    command = [sys.executable, "-m", "pytest", "tests/stress", "-q", *pytest_args]
    print("+", " ".join(command), f"({MODE_ENV}={env[MODE_ENV]})", flush=True)
    status = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
    if report.exists():
        data = json.loads(report.read_text())
        print(f"\nsyncache reliability figures ({data['mode']} mode), {report}:\n")
        print(table(data["figures"]))
    return status


if __name__ == "__main__":
    sys.exit(main())
