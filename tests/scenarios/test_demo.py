"""The example project's demo, as README.md runs it (issue 7).

``example_project/manage.py demo`` runs in a process of its own, exactly as
a reader runs it: it migrates a fresh database, starts gunicorn with
several workers, updates through one and reads through all, with syncache
and then without. Here it runs small (2 workers, 2 rounds) on the embedded
default (the SQLite database cache) and on the session's Redis, and its
JSON results are checked:

* with syncache, every worker's first read after every update is the new
  value, and every worker held the old value in memory before the update
  (otherwise a fresh read would prove nothing);
* without syncache, every worker but the updater serves its old copy, and
  still does after the demo's stale window: the demo can tell stale from
  fresh, so the first check can fail;
* the round trips to the shared cache are counted: three per request in
  the steady state, none without syncache.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.harness.servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent.parent
#: The entry point README's demo command runs, and this test too.
ENTRY_POINT = "example_project/manage.py demo"
WORKERS = 2
ROUNDS = 2
#: A Redis database no other test uses; flushed after the test.
REDIS_DB = 5
#: Seconds the whole demo may take here before the test fails.
DEMO_TIMEOUT = 180


def run_demo(tmp_path: Path, *options: str) -> tuple[dict[str, Any], str]:
    """Run the demo in a process of its own; return its JSON and its output."""
    results = tmp_path / "demo.json"
    # The test process's own Django settings and test-harness variables must
    # not reach the demo: it runs as on a reader's machine.
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DJANGO_", "SYNCACHE_", "PYTHONPATH"))
    }
    command = [
        sys.executable,
        *ENTRY_POINT.split(),
        "--workers", str(WORKERS),
        "--rounds", str(ROUNDS),
        "--json", str(results),
        *options,
    ]  # fmt: skip
    done = subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"the demo failed:\n{output}"
    return json.loads(results.read_text()), output


def worker_rounds(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [worker for played in run["rounds"] for worker in played["workers"]]


def check_results(results: dict[str, Any]) -> None:
    on, off = results["runs"]
    assert (on["syncache"], off["syncache"]) == (True, False)
    for run in (on, off):
        assert len(set(run["pids"])) == WORKERS, "one connection per worker"
        assert len(run["rounds"]) == ROUNDS
        # Each round's update went through another worker.
        updaters = [played["updated_by"] for played in run["rounds"]]
        assert updaters == [run["pids"][i % WORKERS] for i in range(ROUNDS)]
        for worker in worker_rounds(run):
            assert worker["held_before"], f"not in memory before the update: {worker}"

    stale = [w for w in worker_rounds(on) if not w["fresh"]]
    assert stale == [], f"stale reads with syncache on: {stale}"
    for worker in worker_rounds(on):
        assert worker["fresh_after"] is not None
        assert worker["reads"] == 1
        # The middleware's check, the site settings' check, the navigation.
        assert worker["round_trips_before"] == 3, worker
        assert worker["round_trips_after"] > 0, worker

    for worker in worker_rounds(off):
        if worker["updated"]:
            assert worker["fresh"], worker
        else:
            # Its old copy, and still after the stale window.
            assert not worker["fresh"], worker
            assert worker["fresh_after"] is None, worker
            assert worker["stale"], worker
        assert worker["round_trips_before"] == worker["round_trips_after"] == 0


def test_demo_on_the_embedded_default(tmp_path: Path) -> None:
    results, output = run_demo(tmp_path)
    assert results["cache"] == "sqlite"
    check_results(results)
    assert f"all {WORKERS * ROUNDS} first reads after an update were fresh" in output


def test_demo_on_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    url = redis_server.url_for_db(REDIS_DB)
    try:
        results, _ = run_demo(tmp_path, "--cache", url)
    finally:
        import redis

        redis.Redis.from_url(url).flushdb()
    assert results["cache"] == url
    check_results(results)


def readme_demo_command() -> str:
    """The command in the first ``sh`` block after ``<!-- demo-command -->``."""
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- demo-command -->\n```sh\n(.+?)\n```", readme, re.DOTALL)
    assert found, "README.md has no ```sh block right after <!-- demo-command -->"
    return found.group(1).strip()


def test_readme_runs_the_demo_this_test_runs() -> None:
    command = readme_demo_command()
    assert "\n" not in command, "one command"
    assert command.endswith(ENTRY_POINT), command
    assert '.[demo]"' in command, "it installs the demo extra"
    pyproject = (ROOT / "pyproject.toml").read_text()
    extra = re.search(r"^demo = \[(.*?)\]$", pyproject, re.MULTILINE | re.DOTALL)
    assert extra, "pyproject.toml has no demo extra"
    assert '"gunicorn' in extra.group(1)
