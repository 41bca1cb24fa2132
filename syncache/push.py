"""Push invalidation over Redis pub/sub: no round trip while nothing changes.

With ``SYNCACHE["PUSH"] = True`` and a Redis cache alias (or
``SYNCACHE["PUSH_URL"]``), every bump also publishes its key on the alias's
channel, in the same ``MULTI`` as the bump when the cache is that Redis.
Each process runs one :class:`Listener` per alias: a daemon thread, started
at the first check, that subscribes to the channel and, as messages
arrive, checks every :class:`~syncache.local.LocalSyncCache` (emptying the
ones cleared elsewhere) and calls the ``on_invalidate`` callbacks of the
synchronizers whose key was named. Processes that serve no request (task
workers, long commands) are kept current too.

The request-start check then costs no round trip. A holder (the registry
of local caches, or a synchronizer) remembers the listener's sequence
number and the time when it last read the shared cache, and skips the read
while the listener says nothing happened since:

* every message, and every change this process makes itself, takes a new
  number from one process-wide counter (:meth:`Listener.note`);
* a holder is *quiet*, and skips its read, only if the subscription was
  confirmed before the holder's last read (``trusted_from``), no message
  came since (for a synchronizer: none naming its key), the listener heard
  from Redis within :data:`SILENCE` seconds (it pings every
  :data:`HEARTBEAT`), and the read is younger than
  ``SYNCACHE["PUSH_RECHECK_INTERVAL"]``.

So push is never weaker than polling: while the subscription is not
confirmed (starting, disconnected, Redis restarted, gone silent) every
check reads the cache as without push, and after a reconnection every
holder reads once more before it trusts push again (their numbers are
older than the new ``trusted_from``). A lost message is noticed at the
recheck interval at the latest. What push cannot remove is delivery time:
another process sees a change when the message reaches it (well under a
millisecond on a LAN), not when ``mark_updated()`` returns.

The counter is process-wide and survives ``fork()`` (a copy), and a forked
child drops the parent's listeners: its first check starts its own, whose
``trusted_from`` is newer than anything the child inherited.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from syncache.conf import get_config
from syncache.medium import Medium, get_medium

logger = logging.getLogger("syncache")

#: Seconds between two pings of the subscription connection.
HEARTBEAT = 0.5
#: Seconds without any reply from Redis after which the subscription is no
#: longer trusted (a paused or unreachable server answers nothing).
SILENCE = 3 * HEARTBEAT
#: Seconds to wait for Redis to confirm a subscription.
SUBSCRIBE_TIMEOUT = 5.0
#: How many keys a listener remembers the last message of; past it, it
#: forgets them all and every holder reads once more.
MAX_REMEMBERED_KEYS = 10_000
#: Messages handled before the listener refreshes and pings again.
MAX_BATCH = 1000
#: Reconnection backoff: first and longest pause, in seconds.
BACKOFF_START = 0.05
BACKOFF_CAP = 2.0

#: Sequence numbers of messages and subscriptions, shared by every listener
#: of the process (and copied into forked children).
_seqs = itertools.count(1)

#: A holder's last read: (the listener's ``seq`` before it, when).
Mark = tuple[int, float]


class Listener:
    """The subscription of one process to one alias's channel.

    Attributes:
        alias: The cache alias.
        channel: The pub/sub channel name.
        seq: The sequence number of the latest message or local change.
        trusted_from: The sequence number taken when the current
            subscription was confirmed; None while it is not.
        last_heard: When Redis last answered (``time.monotonic()``).
        messages: Messages received.
        connections: Subscriptions confirmed (1 + reconnections).
    """

    def __init__(self, medium: Medium) -> None:
        self.medium = medium
        self.alias = medium.alias
        self.channel = medium.push_channel
        self.pid = os.getpid()
        self.recheck_interval = get_config().push_recheck_interval
        self.seq = next(_seqs)
        self.trusted_from: int | None = None
        self._ready = False
        self.last_heard = -math.inf
        self.last_seen: dict[str, int] = {}
        #: Marks older than this are not trusted per key (keys forgotten).
        self.forgotten_before = 0
        self.messages = 0
        self.connections = 0
        self._trusted = threading.Condition()
        self._stop = threading.Event()
        self._log_at = -math.inf
        self._thread = threading.Thread(
            target=self._run, name=f"syncache-push-{self.alias}", daemon=True
        )

    def __repr__(self) -> str:
        state = "trusted" if self.trusted_from is not None else "polling"
        return f"<Listener {self.alias!r} {self.channel!r} {state}>"

    # -- what holders ask ----------------------------------------------------

    def mark(self) -> Mark:
        """Take before reading the shared cache; pass to :meth:`quiet`."""
        return self.seq, time.monotonic()

    def quiet(self, mark: Mark, key: str | None = None) -> bool:
        """Whether a read made at ``mark`` is still current.

        Args:
            mark: From :meth:`mark`, taken before that read.
            key: The one key the holder depends on; None: any message at
                all makes the holder read again.
        """
        seq, read_at = mark
        trusted_from = self.trusted_from
        if trusted_from is None or seq < trusted_from:
            return False
        if key is None:
            if self.seq != seq:
                return False
        elif self.last_seen.get(key, 0) > seq or seq < self.forgotten_before:
            return False
        now = time.monotonic()
        return now - read_at < self.recheck_interval and now - self.last_heard < SILENCE

    def note(self, key: str) -> None:
        """Record a change of ``key`` (a message, or a bump made here)."""
        seq = next(_seqs)
        if len(self.last_seen) >= MAX_REMEMBERED_KEYS:
            # Forget nothing silently: every holder that read before now
            # reads again (the floor is raised before the keys go).
            self.forgotten_before = seq
            self.last_seen = {}
        self.last_seen[key] = seq
        self.seq = seq

    def wait_trusted(self, timeout: float | None = None) -> bool:
        """Block until the subscription is confirmed and this process was
        brought up to date after it; return whether it is."""
        with self._trusted:
            return self._trusted.wait_for(
                lambda: self._ready and self.trusted_from is not None, timeout
            )

    # -- the thread ------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop listening (within :data:`HEARTBEAT` seconds)."""
        self._stop.set()
        self._distrust()

    def _distrust(self) -> None:
        self._ready = False
        self.trusted_from = None
        self.seq = next(_seqs)

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            # Whatever ends the thread (even a BaseException from a
            # callback), nobody trusts it any more; listener_for() starts
            # another.
            self._distrust()

    def alive(self) -> bool:
        """Whether the listener thread runs (it restarts after errors)."""
        return self._thread.is_alive()

    def _loop(self) -> None:
        backoff = BACKOFF_START
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self.medium.push_client().pubsub()
                self._subscribe(pubsub)
                backoff = BACKOFF_START
                self._listen(pubsub)
            except Exception as error:
                self._distrust()
                self._log_lost(error)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):  # gone already
                        pubsub.close()
            self._stop.wait(backoff / 2 + random.uniform(0, backoff / 2))
            backoff = min(backoff * 2, BACKOFF_CAP)

    def _subscribe(self, pubsub: Any) -> None:
        pubsub.subscribe(self.channel)
        deadline = time.monotonic() + SUBSCRIBE_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"Redis did not confirm {self.channel!r}.")
            message = pubsub.get_message(timeout=remaining)
            if message is not None and message["type"] == "subscribe":
                break
        self.last_heard = time.monotonic()
        self.connections += 1
        if self.connections > 1 or self._log_at > -math.inf:
            logger.info("Push invalidation on cache %r is back.", self.alias)
        self._trust()

    def _trust(self) -> None:
        # Everything read before this moment may have missed messages:
        # every holder reads once more before it trusts push again.
        self.trusted_from = self.seq = next(_seqs)
        self._refresh(None)
        with self._trusted:
            self._ready = True
            self._trusted.notify_all()

    def _listen(self, pubsub: Any) -> None:
        pubsub.ping()
        pinged = rechecked = time.monotonic()
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=HEARTBEAT)
            keys: set[str] = set()
            drained = 0
            while message is not None:
                drained += 1
                self.last_heard = time.monotonic()
                if message["type"] == "subscribe":
                    # redis-py reconnected and subscribed again by itself:
                    # messages of the gap are lost. Read everything again.
                    self._distrust()
                    self._trust()
                elif message["type"] == "message":
                    key = message["data"]
                    key = key.decode() if isinstance(key, bytes) else str(key)
                    self.note(key)
                    self.messages += 1
                    keys.add(key)
                # A burst is handled in slices, so callbacks and pings go on.
                message = None if drained >= MAX_BATCH else pubsub.get_message(0)
            if time.monotonic() - rechecked >= self.recheck_interval:
                self._refresh(None)  # due whatever else arrives
                rechecked = time.monotonic()
            elif keys:
                self._refresh(keys)
            now = time.monotonic()
            if self.last_heard < pinged and now - pinged > SILENCE:
                # Only an unanswered ping counts as silence: time spent in
                # refreshes does not.
                raise TimeoutError(
                    f"Redis has not answered a ping on {self.channel!r} for "
                    f"{SILENCE:g} s."
                )
            if now - pinged >= HEARTBEAT and self.last_heard >= pinged:
                pubsub.ping()
                pinged = now

    def _refresh(self, keys: set[str] | None) -> None:
        """Bring this process up to date after messages naming ``keys``
        (None: after a (re)connection or at the recheck interval).

        Empties the local caches cleared elsewhere (one round trip per
        alias) and calls the callbacks of the synchronizers concerned.
        Errors are logged; the request-time checks still poll meanwhile.
        """
        from django.db import close_old_connections

        from syncache.local import check_all
        from syncache.synchronizer import notify_expired

        # This thread has no requests: recycle its database connections (a
        # database cache, callbacks using the ORM) as a request would.
        close_old_connections()
        try:
            check_all(force=True)
            notify_expired(self.alias, keys)
        except Exception:
            logger.exception("Push invalidation on %r: refresh failed.", self.alias)
        finally:
            close_old_connections()

    def _log_lost(self, error: Exception) -> None:
        if self._stop.is_set():
            return
        now = time.monotonic()
        if now < self._log_at:
            return
        self._log_at = now + get_config().log_interval
        logger.warning(
            "Push invalidation on cache %r lost its subscription (%s); every "
            "check reads the cache until it is back.",
            self.alias,
            error,
        )


_listeners: dict[str, Listener] = {}
_listeners_lock = threading.Lock()


def listener_for(alias: str | None) -> Listener | None:
    """The listener of ``alias``, started if needed; None when it polls.

    Cheap enough for every request: a cached settings read and two dict
    lookups once the listener runs.
    """
    if not get_config().push:
        return None
    medium = get_medium(alias)
    listener = _listeners.get(medium.alias)
    if (
        listener is not None
        and listener.medium is medium
        and (listener.trusted_from is not None or listener.alive())
    ):
        return listener
    return _start(medium)


def _start(medium: Medium) -> Listener | None:
    if medium.push_mode is None:
        return None
    with _listeners_lock:
        listener = _listeners.get(medium.alias)
        if listener is not None and listener.medium is medium and listener.alive():
            return listener
        if listener is not None:
            listener.stop()
        listener = _listeners[medium.alias] = Listener(medium)
        medium.on_publish = listener.note
        listener.start()
        return listener


def describe(alias: str) -> str:
    """How checks of ``alias`` run in this process, for the status reports.

    Never starts a listener.
    """
    medium = get_medium(alias)
    mode = medium.push_mode
    if mode is None:
        return "polling: each check reads the cache"
    via = "PUSH_URL" if mode == "url" else "the cache's Redis"
    listener = _listeners.get(medium.alias)
    if listener is None or listener.medium is not medium:
        return f"push via {via}: no listener yet in this process (polling)"
    if listener.trusted_from is None:
        return f"push via {via}: not subscribed, polling meanwhile"
    return (
        f"push via {via}: subscribed; {listener.messages} messages, "
        f"{listener.connections} connection(s)"
    )


def listeners() -> list[Listener]:
    """The listeners running in this process."""
    return list(_listeners.values())


def stop_all() -> None:
    """Stop every listener of this process (settings changed, tests)."""
    with _listeners_lock:
        for listener in _listeners.values():
            listener.stop()
            if listener.medium.on_publish == listener.note:
                listener.medium.on_publish = None
        _listeners.clear()


def _forget_after_fork() -> None:
    # The parent's threads do not exist in the child: start afresh.
    global _listeners_lock
    _listeners_lock = threading.Lock()
    _listeners.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs: object) -> None:
    if setting in ("CACHES", "SYNCACHE"):
        stop_all()


Callback = Callable[[Any], object]


def run_callbacks(callbacks: list[Callback], target: object) -> None:
    """Call each of ``callbacks`` with ``target``; log (never raise) errors."""
    for callback in list(callbacks):
        try:
            callback(target)
        except Exception:
            logger.exception("on_invalidate callback %r of %r failed", callback, target)


__all__ = [
    "HEARTBEAT",
    "SILENCE",
    "Listener",
    "describe",
    "listener_for",
    "listeners",
    "run_callbacks",
    "stop_all",
]
