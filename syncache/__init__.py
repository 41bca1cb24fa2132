"""syncache: cross-process cache invalidation for Django.

The public API is re-exported here; see the documentation for each name.
"""

from syncache.dogpile import (
    CacheMutex,
    Lock,
    LockError,
    LockNotOwned,
    LockNotSupported,
    NameRegistry,
    NeedRegenerationException,
    ReadWriteMutex,
    UnpicklableValue,
    cache_on_arguments,
    get_or_create,
)
from syncache.groups import (
    Group,
    GroupError,
    GroupKeyError,
    NotGroupCachedError,
    cache_page_against_model,
    cache_page_against_models,
    cache_tagged_page,
    cache_versioned_page,
    cache_versionned_page,
    uncache,
    uncache_from_path,
    uncache_from_tag,
)
from syncache.hooks import clear_on_change, invalidate, invalidate_on_commit
from syncache.keys import make_cache_key
from syncache.local import CacheIdError, LocalSyncCache, check_all, checked
from syncache.medium import (
    FAILED,
    Capabilities,
    LockInTransaction,
    WriteNotConfirmed,
    get_medium,
)
from syncache.spinlock import (
    AtomicQueryInvalidStateException,
    DSpinlockBase,
    DSpinlockError,
    FailIfKeyExistsIsEnabled,
    HashDSpinlock,
    InvalidMutexReleaseEncountered,
    InvalidValueEncounteredDuringUnpacking,
    ProvidedObjectIsNotHashable,
    RedisNotInitializedException,
    SpinlockTriesExceeded,
    fenced_update,
)
from syncache.synchronizer import (
    GenerationSynchronizer,
    expired_many,
    fetch_generations,
)

__all__ = [
    "FAILED",
    "AtomicQueryInvalidStateException",
    "CacheIdError",
    "CacheMutex",
    "Capabilities",
    "DSpinlockBase",
    "DSpinlockError",
    "FailIfKeyExistsIsEnabled",
    "GenerationSynchronizer",
    "Group",
    "GroupError",
    "GroupKeyError",
    "HashDSpinlock",
    "InvalidMutexReleaseEncountered",
    "InvalidValueEncounteredDuringUnpacking",
    "LocalSyncCache",
    "Lock",
    "LockError",
    "LockInTransaction",
    "LockNotOwned",
    "LockNotSupported",
    "NameRegistry",
    "NeedRegenerationException",
    "NotGroupCachedError",
    "ProvidedObjectIsNotHashable",
    "ReadWriteMutex",
    "RedisNotInitializedException",
    "SpinlockTriesExceeded",
    "UnpicklableValue",
    "WriteNotConfirmed",
    "cache_on_arguments",
    "cache_page_against_model",
    "cache_page_against_models",
    "cache_tagged_page",
    "cache_versioned_page",
    "cache_versionned_page",
    "check_all",
    "checked",
    "clear_on_change",
    "expired_many",
    "fenced_update",
    "fetch_generations",
    "get_medium",
    "get_or_create",
    "invalidate",
    "invalidate_on_commit",
    "make_cache_key",
    "uncache",
    "uncache_from_path",
    "uncache_from_tag",
]

__version__ = "0.1.0"
