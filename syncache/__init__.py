"""syncache: cross-process cache invalidation for Django.

The public API is re-exported here; see the documentation for each name.
"""

from syncache.keys import make_cache_key
from syncache.medium import FAILED, Capabilities, WriteNotConfirmed, get_medium
from syncache.synchronizer import (
    GenerationSynchronizer,
    expired_many,
    fetch_generations,
)

__all__ = [
    "FAILED",
    "Capabilities",
    "GenerationSynchronizer",
    "WriteNotConfirmed",
    "expired_many",
    "fetch_generations",
    "get_medium",
    "make_cache_key",
]

__version__ = "0.1.0"
