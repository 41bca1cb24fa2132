"""A per-object distributed spin lock: dspinlock's API on the Django cache.

Each lock has one *state* key in the shared cache. While a holder runs the
body of its ``with`` block, the key holds ``"computing,<token>"`` (the
token is random, one per acquisition), with an expiry of
``max_block_time``. When the body returns, the holder replaces it with
``"computed,<token>"``, kept for ``expire_at_timedelta``; when the body
raises, it deletes it. Absent means nobody computed it, or long ago.

Acquiring is one atomic step, :meth:`~syncache.medium.Medium.lock_take` (a
single Lua script on Redis, an atomic ``add`` then a compare-and-set
elsewhere): the state is taken when it is absent, or when it is computed
and the caller wants to compute again (the default), and the key's fencing
counter is incremented in the same step. When it is not taken, the caller
learns what was there and decides:

* ``fail_if_key_exists=True``: any state raises
  :exc:`FailIfKeyExistsIsEnabled`;
* computed, with ``cached_if_computed=True``: the body runs at once
  without the lock (``lock.acquired`` is False), so it can skip the work;
* computing (someone else holds it): the caller waits, then tries again.
  On Redis the holder's release wakes one waiter at once (a signal list
  next to the key, popped with ``BLPOP``); elsewhere waiters back off
  exponentially, with jitter, from 2 ms up to ``spinlock_sleep_thresh``.
  A waiter gives up with :exc:`SpinlockTriesExceeded` once it has tried
  ``max_spinlock_tries`` times *and* waited ``max_spinlock_tries *
  spinlock_sleep_thresh`` seconds (monotonic clock): never sooner than
  dspinlock would, but without its fixed sleeps.

Changing the state is for the owner only: the new state is written only if
the key still holds this acquisition's value (a Lua script on Redis,
``gets``/``cas`` on memcached, a conditional statement on the database
cache). A holder that kept the lock longer than ``max_block_time`` lost it
to the cache's expiry (the "forced unblock", decided by the cache's clock,
never by comparing two machines' clocks); its release changes nothing and
raises :exc:`InvalidMutexReleaseEncountered`.

Keys come from :meth:`DSpinlockBase.get_key`. :class:`HashDSpinlock` uses
``"dspinlock,<sha256 of a canonical encoding of the object>"``, the same in
every process and on every machine, where dspinlock used the builtin
``hash()``, which differs per process for strings.

When the cache backend fails, the lock is held in this process only
(``lock.degraded``) and the body runs: an outage is not an error page
(DESIGN.md promise 5); ``SYNCACHE["FAILURE_POLICY"] = "raise"`` makes the
error propagate instead. DESIGN.md promise 7 applies.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import fractions
import functools
import hashlib
import logging
import math
import numbers
import reprlib
import secrets
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Hashable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from django.db.models import Model, QuerySet

from syncache.dogpile import (
    FENCE_SUFFIX,
    MAX_LOCK_TIMEOUT,
    LockError,
    NameRegistry,
    backoff_pause,
    wait_for_release,
)
from syncache.keys import make_cache_key
from syncache.medium import FAILED, LockTake, Medium, RedisMedium, get_medium

if TYPE_CHECKING:
    from django.core.cache.backends.base import BaseCache

logger = logging.getLogger("syncache")

_L = TypeVar("_L", bound="DSpinlockBase")

#: The two states a spin lock's key can hold, before the owner's token.
COMPUTING = "computing"
COMPUTED = "computed"
#: Suffix of the state key derived from :meth:`DSpinlockBase.get_key`.
#: ``!`` never appears in a key made by :func:`~syncache.keys.make_cache_key`.
STATE_SUFFIX = "!spinlock"


class DSpinlockError(LockError):
    """Base class of the spin lock errors (a :exc:`~syncache.dogpile.LockError`)."""


class AtomicQueryInvalidStateException(DSpinlockError):
    """The state key holds an unknown state, or a lock instance was
    acquired twice (it is not reentrant)."""


class InvalidMutexReleaseEncountered(DSpinlockError):
    """A release by an instance that does not hold the lock: it was never
    acquired, or it was lost (expired after ``max_block_time``, perhaps
    taken by another holder, whose lock is left alone)."""


class RedisNotInitializedException(DSpinlockError):
    """There is nothing to hold the lock in: ``sess`` is not a redis-py
    client, redis-py is missing, or the cache backend cannot hold a
    cross-process lock (file, dummy)."""


class SpinlockTriesExceeded(DSpinlockError):
    """Another holder kept the lock for longer than this caller waits."""


class InvalidValueEncounteredDuringUnpacking(DSpinlockError):
    """The state key holds a value no spin lock wrote."""


class FailIfKeyExistsIsEnabled(DSpinlockError):
    """``fail_if_key_exists=True`` and the key holds a state."""


class ProvidedObjectIsNotHashable(DSpinlockError, TypeError):
    """:class:`HashDSpinlock` cannot make a stable key for the object."""


# -- Redis connections given the dspinlock way ----------------------------------


@dataclasses.dataclass
class RedisParameters:
    """Where a spin lock given ``redis_params=`` keeps its state.

    dspinlock's fields and defaults, plus ``socket_timeout``: a server
    that stopped answering fails a call after that many seconds instead of
    hanging the request.
    """

    redis_host: str = "localhost"
    rdb: int = 0
    port: int = 6379
    ssl: bool = False
    socket_connect_timeout: float = 2
    decode_responses: bool = True
    socket_timeout: float | None = 2


def create_redis_conn(params: RedisParameters | None = None) -> Any:
    """Return a redis-py client for ``params`` (default: localhost:6379/0).

    Raises:
        RedisNotInitializedException: redis-py is not installed.
    """
    try:
        import redis
    except ImportError as error:
        raise RedisNotInitializedException(
            "redis_params= needs redis-py: pip install redis."
        ) from error
    params = RedisParameters() if params is None else params
    return redis.Redis(
        host=params.redis_host,
        port=params.port,
        db=params.rdb,
        ssl=params.ssl,
        socket_connect_timeout=params.socket_connect_timeout,
        socket_timeout=params.socket_timeout,
        decode_responses=params.decode_responses,
    )


class RedisClientMedium(RedisMedium):
    """A redis-py client given with ``sess=``, as a lock medium.

    The keys are used as they are (syncache's ``KEY_PREFIX`` is in them;
    there is no Django ``KEY_PREFIX`` or version), and only the lock
    operations are meant to be used.
    """

    def __init__(self, client: Any) -> None:
        super().__init__(f"redis client {id(client):#x}")
        self._client = client

    @property
    def cache(self) -> BaseCache:
        raise RedisNotInitializedException(
            f"{self!r} has no Django cache behind it: it is a redis-py client "
            f"given to a spin lock with sess= or redis_params=."
        )

    def full_key(self, key: str) -> str:
        return key


_client_media: NameRegistry[RedisClientMedium] = NameRegistry(
    lambda identifier, client: RedisClientMedium(client)
)
_param_clients: dict[tuple[Any, ...], Any] = {}
_param_clients_lock = threading.Lock()


def _client_for(params: RedisParameters) -> Any:
    """One client per distinct parameters (dspinlock made one per lock)."""
    identity = dataclasses.astuple(params)
    with _param_clients_lock:
        client = _param_clients.get(identity)
        if client is None:
            client = _param_clients[identity] = create_redis_conn(params)
        return client


def _medium_for(sess: Any, redis_params: Any, cache_alias: str | None) -> Medium:
    if sess is not None and redis_params is not None:
        raise ValueError(
            "Pass sess= (a redis-py client) or redis_params= (to create one), not both."
        )
    if (sess is not None or redis_params is not None) and cache_alias is not None:
        raise ValueError(
            f"cache_alias={cache_alias!r} and sess=/redis_params= name two "
            f"different places to keep the lock; pass one of them."
        )
    if redis_params is not None:
        if not isinstance(redis_params, RedisParameters):
            raise TypeError(
                f"redis_params must be a syncache.spinlock.RedisParameters, "
                f"not {type(redis_params).__name__}."
            )
        sess = _client_for(redis_params)
    if sess is not None:
        try:
            import redis
        except ImportError as error:
            raise RedisNotInitializedException(
                "sess= needs redis-py: pip install redis."
            ) from error
        if not isinstance(sess, redis.Redis):
            raise RedisNotInitializedException(
                f"sess must be a redis-py client (redis.Redis), not "
                f"{type(sess).__name__}; or leave it out to use the Django "
                f"cache (SYNCACHE['CACHE_ALIAS'] or cache_alias=)."
            )
        return _client_media.get(id(sess), sess)
    medium = get_medium(cache_alias)
    capabilities = medium.capabilities
    if not (capabilities.atomic_add and capabilities.compare_and_delete):
        cache = medium.cache
        raise RedisNotInitializedException(
            f"A spin lock needs an atomic add and a compare-and-delete, which "
            f"cache {medium.alias!r} ({type(cache).__module__}."
            f"{type(cache).__name__}) does not have. Use Redis, memcached or "
            f"the database cache (cache_alias=), or pass sess=."
        )
    return medium


class _LocalLock:
    """A ``threading.Lock`` that a :class:`NameRegistry` can hold weakly."""

    def __init__(self, identifier: object) -> None:
        self.lock = threading.Lock()


#: In-process locks of the spin locks held while the backend fails.
_local_locks: NameRegistry[_LocalLock] = NameRegistry(_LocalLock)


# -- stable object hashes -----------------------------------------------------


def _encode_number(value: Any) -> bytes:
    if isinstance(value, decimal.Decimal) and value.is_snan():
        # Comparing one raises InvalidOperation; hash() refuses it too.
        raise ProvidedObjectIsNotHashable(
            f"A signalling NaN ({value!r}) has no hash() and compares equal to "
            f"nothing; use Decimal('NaN') or another value."
        )
    if value != value:  # NaN, float or Decimal
        return b"n:nan;"
    if value in (math.inf, -math.inf):
        return b"n:inf;" if value > 0 else b"n:-inf;"
    exact = fractions.Fraction(value)
    return b"n%d/%d;" % (exact.numerator, exact.denominator)


def _encode(obj: Any, out: list[bytes]) -> None:
    """Append a canonical encoding of ``obj`` to ``out``.

    Every encoding is self-delimiting (lengths and counts before contents),
    so the concatenation of a tuple's items is unambiguous. Values that
    compare equal in Python encode equally: ``1``, ``1.0``, ``True`` and
    ``Decimal("1")`` are one number (as their ``hash()`` is), an aware
    datetime is encoded in UTC, a named tuple as a tuple, a ``StrEnum`` as
    its string.
    """
    if obj is None:
        out.append(b"N;")
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")
        out.extend((b"s%d:" % len(data), data))
    elif isinstance(obj, bytes):
        out.extend((b"b%d:" % len(obj), obj))
    elif isinstance(obj, int | float | decimal.Decimal | fractions.Fraction):
        out.append(_encode_number(obj))
    elif isinstance(obj, tuple):
        out.append(b"t%d(" % len(obj))
        for item in obj:
            _encode(item, out)
        out.append(b")")
    elif isinstance(obj, frozenset):
        items = []
        for item in obj:
            parts: list[bytes] = []
            _encode(item, parts)
            items.append(b"".join(parts))
        out.extend((b"f%d(" % len(items), *sorted(items), b")"))
    elif isinstance(obj, enum.Enum):
        member = f"{type(obj).__module__}.{type(obj).__qualname__}.{obj.name}"
        out.append(b"e%d:%s" % (len(member), member.encode()))
    elif isinstance(obj, dt.datetime):
        if obj.utcoffset() is not None:
            utc = obj.astimezone(dt.timezone.utc).replace(tzinfo=None)
            out.append(b"z" + utc.isoformat().encode() + b";")
        else:
            out.append(b"d" + obj.isoformat().encode() + b";")
    elif isinstance(obj, dt.date):
        out.append(b"D" + obj.isoformat().encode() + b";")
    elif isinstance(obj, dt.timedelta):
        out.append(b"T%d.%d.%d;" % (obj.days, obj.seconds, obj.microseconds))
    elif isinstance(obj, uuid.UUID):
        out.append(b"u" + obj.hex.encode() + b";")
    elif isinstance(obj, Model):
        if obj.pk is None:
            raise ProvidedObjectIsNotHashable(
                f"An unsaved {type(obj).__name__} has no primary key to make a "
                f"spin lock key from; save it first."
            )
        model = obj._meta.concrete_model or type(obj)
        label = model._meta.label_lower.encode()
        out.append(b"m%d:%s" % (len(label), label))
        _encode(obj.pk, out)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        cls = f"{type(obj).__module__}.{type(obj).__qualname__}".encode()
        fields = [field for field in dataclasses.fields(obj) if field.compare]
        out.append(b"c%d:%s%d(" % (len(cls), cls, len(fields)))
        for field in fields:
            _encode(getattr(obj, field.name), out)
        out.append(b")")
    else:
        raise ProvidedObjectIsNotHashable(
            f"Cannot make a spin lock key from a {type(obj).__qualname__} that "
            f"is the same in every process (the builtin hash() is not: it "
            f"differs per process for strings). Pass a str, a number, None, "
            f"bytes, a date, datetime, timedelta, UUID or Enum, a saved model "
            f"instance, or a tuple, frozenset or dataclass of those; or "
            f"override _get_uid()."
        )


def stable_hash(obj: Any) -> str:
    """Return the SHA-256 (hex) of a canonical encoding of ``obj``.

    The same in every process, machine and release, and equal for objects
    that compare equal (see :class:`HashDSpinlock` for what is accepted).

    Raises:
        ProvidedObjectIsNotHashable: ``obj`` is unhashable, or of a type
            with no stable encoding.
    """
    if not isinstance(obj, Hashable):
        raise ProvidedObjectIsNotHashable(
            f"Provided object with type: {type(obj).__qualname__} does not "
            f"implement `Hashable`; pass a tuple or frozenset instead of a "
            f"list or set."
        )
    out: list[bytes] = []
    _encode(obj, out)
    return hashlib.sha256(b"".join(out)).hexdigest()


# -- the lock ---------------------------------------------------------------------


def _positive_seconds(owner: str, name: str, value: object) -> float:
    if not isinstance(value, dt.timedelta):
        raise TypeError(
            f"{owner}.{name} must be a datetime.timedelta, not "
            f"{type(value).__name__} ({value!r})."
        )
    seconds = value.total_seconds()
    if not 0.001 <= seconds <= MAX_LOCK_TIMEOUT:
        raise ValueError(
            f"{owner}.{name} must be at least 1 ms and at most 30 days, not {value!r}."
        )
    return seconds


class DSpinlockBase(ABC):
    """A distributed spin lock on one key: dspinlock's ``DSpinlockBase``.

    Use it as a context manager; subclasses implement :meth:`get_key`
    (:class:`HashDSpinlock` derives it from the object). One instance is one
    acquisition at a time, used by one thread; create one per ``with``
    block.

    Args:
        obj: What the lock is for; :meth:`get_key` makes the key from it.
        sess: A redis-py client to keep the lock in, for code coming from
            dspinlock. Default: the Django cache.
        redis_params: :class:`RedisParameters` to create such a client
            (one per distinct parameters), instead of ``sess``.
        fail_if_key_exists: Raise :exc:`FailIfKeyExistsIsEnabled` instead
            of waiting or computing when the key holds any state (someone
            is computing, or computed less than ``expire_at_timedelta``
            ago).
        cached_if_computed: When the state is computed, enter at once
            without the lock (``acquired`` is False) instead of computing
            again. A waiter returns the same way as soon as the holder it
            waited for has computed.
        cache_alias: The Django cache to use. Default:
            ``SYNCACHE["CACHE_ALIAS"]``.

    Class attributes (override them in a subclass or on an instance before
    entering):

    * ``max_spinlock_tries`` (10) and ``spinlock_sleep_thresh`` (0.5 s): a
      waiter gives up after at least that many tries and that many times
      the threshold in seconds; no pause between two tries is longer than
      the threshold.
    * ``expire_at_timedelta`` (1 hour): how long the computed state is
      kept.
    * ``max_block_time`` (30 minutes): how long a holder keeps the lock;
      then it expires in the cache, whatever the holder does.

    Attributes:
        acquired: This instance holds the lock (in the body: False when it
            entered because the state was computed).
        fencing_token: The fencing token of this acquisition: it increases
            with every acquisition of the key (see :func:`fenced_update`).
            None when not held, or when degraded.
        degraded: Held in this process only: the backend failed.

    Raises:
        RedisNotInitializedException: nothing can hold the lock (see the
            exception).
        TypeError, ValueError: an argument or a class attribute is invalid;
            the message says which.
    """

    max_spinlock_tries: int = 10
    spinlock_sleep_thresh: float = 0.5
    expire_at_timedelta: dt.timedelta = dt.timedelta(hours=1)
    max_block_time: dt.timedelta = dt.timedelta(minutes=30)
    _key_prefix: str = "dspinlock"
    _key_sep: str = ","

    def __init__(
        self,
        obj: Any,
        sess: Any = None,
        redis_params: RedisParameters | None = None,
        fail_if_key_exists: bool = False,
        cached_if_computed: bool = False,
        *,
        cache_alias: str | None = None,
    ) -> None:
        self._obj = obj
        self._orphan: str | None = None
        self._medium = _medium_for(sess, redis_params, cache_alias)
        self._fail_if_key_exists = bool(fail_if_key_exists)
        self._cached_if_computed = bool(cached_if_computed)
        self.acquired = False
        self.fencing_token: int | None = None
        self.degraded = False
        self._value: str | None = None
        self._local: _LocalLock | None = None
        self._state_key = ""
        self._acquired_at = 0.0
        self._limits()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.get_key()!r}>"

    @staticmethod
    def _get_uid(obj: Any) -> str:
        """Return the part of the key that stands for ``obj``:
        :func:`stable_hash`. Override it to key objects your own way; it
        must give the same result in every process."""
        return stable_hash(obj)

    @functools.cached_property
    def _obj_hash(self) -> str:
        return self._get_uid(self._obj)

    @property
    def _obj_uid(self) -> str:
        """dspinlock's name for :meth:`_get_uid` of the object (its
        subclasses' ``get_key()`` read it)."""
        return self._obj_hash

    @abstractmethod
    def get_key(self) -> str:
        """Return the key of the lock: the same in every process for the
        same object. syncache's ``KEY_PREFIX`` is added to it."""

    @property
    def state_key(self) -> str:
        """The cache key that holds the lock's state (``computing,<token>``
        or ``computed,<token>``): :meth:`get_key` in syncache's spin lock
        namespace (see :func:`~syncache.keys.make_cache_key`)."""
        return self._keys()[0]

    def _limits(self) -> tuple[float, float]:
        """Check the class attributes; return the lock's and the computed
        state's lifetimes in seconds."""
        owner = type(self).__name__
        tries = self.max_spinlock_tries
        if isinstance(tries, bool) or not isinstance(tries, int) or tries < 1:
            raise ValueError(
                f"{owner}.max_spinlock_tries must be an integer >= 1, not {tries!r}."
            )
        pause = self.spinlock_sleep_thresh
        if (
            isinstance(pause, bool)
            or not isinstance(pause, numbers.Real)
            or not 0 <= pause < math.inf
        ):
            raise ValueError(
                f"{owner}.spinlock_sleep_thresh must be a number of seconds "
                f">= 0, not {pause!r}."
            )
        return (
            _positive_seconds(owner, "max_block_time", self.max_block_time),
            _positive_seconds(owner, "expire_at_timedelta", self.expire_at_timedelta),
        )

    def _keys(self) -> tuple[str, str]:
        key = self.get_key()
        if not isinstance(key, str):
            raise TypeError(
                f"{type(self).__name__}.get_key() must return a str, not "
                f"{type(key).__name__}."
            )
        base = make_cache_key(key, namespace="spin")
        return base + STATE_SUFFIX, base + FENCE_SUFFIX

    def _state(self, raw: Any, state_key: str) -> str | None:
        """Return the state a stored value holds (None when absent)."""
        if raw is None:
            return None
        if isinstance(raw, str):
            state, comma, token = raw.partition(",")
            if comma and token and "," not in token:
                if state in (COMPUTING, COMPUTED):
                    return state
                raise AtomicQueryInvalidStateException(
                    f"Spin lock {state_key!r} is in an unknown state "
                    f"{state!r} (expected {COMPUTING!r} or {COMPUTED!r}). "
                    f"Delete it with delete_atomic_query_mutex_state()."
                )
        raise InvalidValueEncounteredDuringUnpacking(
            f"Spin lock {state_key!r} holds {reprlib.repr(raw)}, which no spin "
            f"lock wrote (expected 'computing,<token>' or 'computed,<token>'): "
            f"something else writes to this key. Delete it with "
            f"delete_atomic_query_mutex_state(), or give the lock another key."
        )

    # -- acquiring ------------------------------------------------------------

    def __enter__(self: _L) -> _L:
        self.acquire()
        return self

    def acquire(self) -> bool:
        """Take the lock, or learn that the state is computed.

        Returns:
            :attr:`acquired`: True when this instance now holds the lock;
            False when ``cached_if_computed`` and the state is computed.

        Raises:
            FailIfKeyExistsIsEnabled: ``fail_if_key_exists`` and the key
                holds a state.
            SpinlockTriesExceeded: someone else held the lock for as long
                as this caller waits.
            InvalidValueEncounteredDuringUnpacking,
            AtomicQueryInvalidStateException: the key holds something no
                spin lock wrote.
            AtomicQueryInvalidStateException: this instance holds it already.
        """
        if self.acquired:
            raise AtomicQueryInvalidStateException(
                f"{self!r} is held already; a spin lock is not reentrant: "
                f"create one instance per with block."
            )
        block_seconds, _ = self._limits()
        medium = self._medium
        state_key, fence_key = self._keys()
        self._state_key = state_key
        mine = f"{COMPUTING},{secrets.token_hex(16)}"
        keep_computed = self._fail_if_key_exists or self._cached_if_computed
        take = functools.partial(
            medium.lock_take,
            state_key,
            mine,
            block_seconds,
            fence_key=fence_key,
            over=None if keep_computed else COMPUTED + ",",
        )
        patience = self.max_spinlock_tries * self.spinlock_sleep_thresh
        started = time.monotonic()
        tries = 0
        retries_at_once = 0
        woken = False
        while True:
            result = medium.attempt("acquiring spin lock", state_key, take)
            if not isinstance(result, LockTake):
                # The take may have reached the cache with its reply lost:
                # release() deletes that state too, if it is there.
                self._orphan = mine
                return self._acquire_degraded(patience - (time.monotonic() - started))
            if result.taken:
                self._hold(mine, result.fence)
                return True
            tries += 1
            state = self._state(result.found, state_key)
            if state is not None and self._fail_if_key_exists:
                raise FailIfKeyExistsIsEnabled(
                    f"Spin lock {self.get_key()!r} is {state} (key "
                    f"{state_key!r}) and fail_if_key_exists is set."
                )
            if state == COMPUTED and self._cached_if_computed:
                if woken:
                    self._pass_wake_up(state_key)
                return False
            if state != COMPUTING and retries_at_once < 2:
                # Released or taken over since: try again at once, twice at
                # most (a backend answering defaults must not spin a CPU).
                retries_at_once += 1
                continue
            retries_at_once = 0
            waited = time.monotonic() - started
            pause = backoff_pause(medium, tries, self.spinlock_sleep_thresh)
            if tries >= self.max_spinlock_tries:
                if waited >= patience:
                    raise SpinlockTriesExceeded(
                        f"Spinlock tries limit of {self.max_spinlock_tries} was "
                        f"exceeded for key {self.get_key()!r}: another holder "
                        f"kept it for the {waited:.3f} s this caller waited "
                        f"(max_spinlock_tries x spinlock_sleep_thresh = "
                        f"{patience:g} s)."
                    )
                pause = min(pause, patience - waited)
            woken = wait_for_release(medium, state_key, pause)

    def _pass_wake_up(self, state_key: str) -> None:
        """A waiter woken by a release that leaves without the lock passes
        the wake-up on, so every waiter of a computed state returns at once."""
        medium = self._medium
        medium.attempt(
            "waking spin lock waiters",
            state_key,
            functools.partial(medium.lock_notify, state_key),
        )

    def _hold(self, value: str | None, fence: int | None) -> None:
        self._value = value
        self.acquired = True
        self.degraded = value is None
        self.fencing_token = fence
        self._acquired_at = time.monotonic()

    def _acquire_degraded(self, patience: float) -> bool:
        local = _local_locks.get((self._medium.alias, self._state_key))
        if not local.lock.acquire(timeout=max(0.0, patience)):
            raise SpinlockTriesExceeded(
                f"Spin lock {self.get_key()!r} is held by another thread of this "
                f"process while the cache backend fails (see the log)."
            )
        self._local = local
        self._hold(None, None)
        return True

    # -- releasing --------------------------------------------------------------

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self.acquired:
            return
        if exc_type is None:
            self.release(computed=True)
            return
        try:
            self.release(computed=False)
        except InvalidMutexReleaseEncountered as lost:
            # The body's own error is the one to report.
            logger.warning("%s (while %s propagated)", lost, exc_type.__name__)

    def release(self, computed: bool = True) -> None:
        """End this acquisition.

        Args:
            computed: Mark the state computed, kept for
                ``expire_at_timedelta`` (what leaving the ``with`` block
                normally does); False deletes it (what an exception does).

        Raises:
            InvalidMutexReleaseEncountered: this instance does not hold the
                lock, or lost it: it expired (``max_block_time``), and may
                have been taken by another holder, whose state is left as
                it is. When the backend fails, nothing is raised (the error
                is logged; the lock expires by itself).
        """
        if not self.acquired:
            raise InvalidMutexReleaseEncountered(
                f"release() of {self!r}, which this instance does not hold."
            )
        value, local = self._value, self._local
        held_for = time.monotonic() - self._acquired_at
        self.acquired = self.degraded = False
        self.fencing_token = None
        self._value = self._local = None
        medium = self._medium
        state_key = self._state_key
        if local is not None:
            local.lock.release()
            orphan, self._orphan = self._orphan, None
            if orphan is not None:  # best effort: the backend may be back
                medium.attempt(
                    "releasing spin lock",
                    state_key,
                    functools.partial(medium.lock_release, state_key, orphan),
                )
            return
        assert value is not None
        if computed:
            _, keep_seconds = self._limits()
            done = COMPUTED + value[len(COMPUTING) :]
            change = functools.partial(
                medium.lock_replace, state_key, value, done, keep_seconds, wake=True
            )
        else:
            change = functools.partial(medium.lock_release, state_key, value)
        changed = medium.attempt("releasing spin lock", state_key, change)
        if changed is FAILED or changed:
            return
        raise InvalidMutexReleaseEncountered(
            f"Spin lock {self.get_key()!r} (key {state_key!r}) was lost "
            f"{held_for:.3f} s after it was acquired: it expired "
            f"(max_block_time is {self.max_block_time}) and may have been "
            f"taken by another holder, whose state was left alone. The "
            f"state was not marked {COMPUTED if computed else 'deleted'}. "
            f"Raise max_block_time, and guard writes with the fencing token."
        )

    def delete_atomic_query_mutex_state(self) -> bool:
        """Delete the computed state, so that the next caller computes again.

        A lock being held (computing) is never deleted, not even by its own
        holder: it ends with its ``with`` block, or expires after
        ``max_block_time``. A value no spin lock wrote is deleted.

        Returns:
            Whether a state was deleted (False when there was none, it is
            held, or the backend failed).
        """
        medium = self._medium
        state_key, _ = self._keys()
        found: Any = medium.attempt(
            "reading spin lock", state_key, lambda: medium.lock_value(state_key)
        )
        if found is FAILED or found is None:
            return False
        try:
            state = self._state(found, state_key)
        except DSpinlockError:
            state = None  # a value no spin lock wrote: delete it too
        if state == COMPUTING:
            logger.debug("Spin lock %r is held; its state was not deleted.", state_key)
            return False
        deleted = medium.attempt(
            "deleting spin lock",
            state_key,
            lambda: medium.lock_release(state_key, found),
        )
        return deleted is True


class HashDSpinlock(DSpinlockBase):
    """A spin lock per object: dspinlock's ``HashDSpinlock``.

    The key is ``{_key_prefix}{_key_sep}{hash}``, ``"dspinlock,<hash>"``
    by default, where the hash is :func:`stable_hash` of the object: the
    SHA-256 of a canonical encoding, the same in every process and on every
    machine, and equal for objects that compare equal. Accepted: None,
    str, bytes, numbers (int, float, bool, Decimal, Fraction), date,
    datetime, timedelta, UUID, Enum members, saved model instances (their
    model and primary key), and tuples, frozensets and dataclasses of
    those.

    Raises:
        ProvidedObjectIsNotHashable: another kind of object (at
            construction). Override ``_get_uid()`` to key it your own way.
    """

    def __init__(
        self,
        obj: Any,
        sess: Any = None,
        redis_params: RedisParameters | None = None,
        fail_if_key_exists: bool = False,
        cached_if_computed: bool = False,
        *,
        cache_alias: str | None = None,
    ) -> None:
        super().__init__(
            obj,
            sess,
            redis_params,
            fail_if_key_exists,
            cached_if_computed,
            cache_alias=cache_alias,
        )
        self._obj_hash  # noqa: B018 - bad input is reported here, not later

    def get_key(self) -> str:
        """Return ``f"{_key_prefix}{_key_sep}{hash of the object}"``."""
        return f"{self._key_prefix}{self._key_sep}{self._obj_hash}"


# -- fencing -----------------------------------------------------------------------


def fenced_update(
    queryset: QuerySet[Any],
    fencing_token: int | None,
    *,
    fence_field: str = "fence",
    **values: Any,
) -> int:
    """Update rows only if no later lock holder has written them.

    One ``UPDATE ... SET <fence_field> = token, ... WHERE <fence_field> <=
    token``: the database refuses the write of a holder whose lock expired
    and was taken by another holder that already wrote (its token is
    larger). The same holder may write several times.

    Args:
        queryset: The rows to update.
        fencing_token: ``lock.fencing_token`` of the lock held.
        fence_field: An integer field of the model (default 0), the largest
            token that wrote the row.
        values: The fields to set, as for ``QuerySet.update()``.

    Returns:
        The number of rows updated: 0 when a later holder wrote them (or
        none matched the queryset).

    Raises:
        ValueError: no fencing token (the lock is not held, or is held
            degraded during a cache outage): the write cannot be guarded.
    """
    if isinstance(fencing_token, bool) or not isinstance(fencing_token, int):
        raise ValueError(
            f"fenced_update() needs the fencing token of a held lock, not "
            f"{fencing_token!r} (None: not held, or held in this process only "
            f"while the cache fails, when writes cannot be fenced)."
        )
    return int(
        queryset.filter(**{f"{fence_field}__lte": fencing_token}).update(
            **{fence_field: fencing_token}, **values
        )
    )


__all__ = [
    "COMPUTED",
    "COMPUTING",
    "AtomicQueryInvalidStateException",
    "DSpinlockBase",
    "DSpinlockError",
    "FailIfKeyExistsIsEnabled",
    "HashDSpinlock",
    "InvalidMutexReleaseEncountered",
    "InvalidValueEncounteredDuringUnpacking",
    "ProvidedObjectIsNotHashable",
    "RedisClientMedium",
    "RedisNotInitializedException",
    "RedisParameters",
    "SpinlockTriesExceeded",
    "create_redis_conn",
    "fenced_update",
    "stable_hash",
]
