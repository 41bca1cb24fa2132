"""How big a stress run is: ``SYNCACHE_STRESS=small`` (the default, what CI
runs with the rest of the suite) or ``full`` (``python -m tests.stress``).

The small mode runs every scenario, with every fault, on every backend, with
few operations: it proves each test can run and fail. The full mode runs
the same tests with the operation counts the figures are published for.
"""

from __future__ import annotations

import os

MODE_ENV = "SYNCACHE_STRESS"
MODE = os.environ.get(MODE_ENV, "small").strip().lower() or "small"
if MODE not in ("small", "full"):
    raise ValueError(
        f"{MODE_ENV} must be 'small' (the default) or 'full', not {MODE!r}."
    )
FULL = MODE == "full"

#: Processes of a model run (the issue asks for 8).
WORKERS = 8
#: Operations of each worker in a model run: 8 x 6,250 = 50,000 per backend
#: in the full run.
MODEL_OPS = 6_250 if FULL else 50
#: Objects per API: few enough that processes collide on them constantly.
OBJECTS = 24 if FULL else 8
#: Operations each worker makes in each phase of a fault run (before the
#: fault, while it lasts, after recovery).
PHASE_OPS = 400 if FULL else 12
#: Operations per worker while a server is down or paused: each of them
#: waits for the client timeout when the server is paused.
OUTAGE_OPS = 6 if FULL else 2
#: How many times each fault is injected in a fault run.
FAULT_ROUNDS = 3 if FULL else 1
#: Operations of each worker against the evicting memcached.
EVICTION_OPS = 2_500 if FULL else 60
#: Filler keys each worker writes per operation there (one round trip).
FILLERS = 20
#: Hypothesis examples (and steps of each) for the stateful model, and
#: examples for each fuzzed entry point.
STATEFUL_EXAMPLES = 200 if FULL else 15
STATEFUL_STEPS = 50 if FULL else 20
FUZZ_EXAMPLES = 500 if FULL else 100

__all__ = [
    "EVICTION_OPS",
    "FAULT_ROUNDS",
    "FILLERS",
    "FULL",
    "FUZZ_EXAMPLES",
    "MODE",
    "MODEL_OPS",
    "OBJECTS",
    "OUTAGE_OPS",
    "PHASE_OPS",
    "STATEFUL_EXAMPLES",
    "STATEFUL_STEPS",
    "WORKERS",
]
