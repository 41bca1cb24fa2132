"""Stable, backend-safe cache keys.

:func:`make_cache_key` turns any text (or sequence of text) into a key that
every Django cache backend accepts, memcached's included, after Django has
added its own ``KEY_PREFIX`` and version:

* every part is percent-encoded (``urllib.parse.quote`` with no safe
  characters), so the result is printable ASCII without spaces or control
  characters, and parts joined with ``:`` stay distinguishable;
* a key longer than the budget is replaced by a readable head and the
  SHA-256 of the whole encoded key, marked with ``#``, a character the
  encoding never produces: hashed and plain keys can never be equal.

Two different inputs therefore never give the same key (short of a SHA-256
collision). The builtin ``hash()`` is never used: it differs per process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from urllib.parse import quote

from syncache.conf import get_config

#: Memcached's limit on a key, in bytes.
MEMCACHED_MAX_KEY_LENGTH = 250

#: The default budget for the key syncache builds. The rest of the 250 bytes
#: is left for Django's ``KEY_PREFIX`` and version (``"<prefix>:<version>:"``);
#: system check ``syncache.W003`` reports a prefix that does not fit.
DEFAULT_MAX_LENGTH = 200

#: How much of an over-long key is kept, readable, before its hash.
_HASHED_HEAD_LENGTH = 48

KeyInput = str | Sequence[str]


def _encode_parts(key: KeyInput) -> str:
    parts: Sequence[str] = (key,) if isinstance(key, str) else key
    if isinstance(key, (bytes, bytearray)) or not isinstance(parts, Sequence):
        raise TypeError(
            f"A cache key must be a string or a sequence of strings, not "
            f"{type(key).__name__}."
        )
    if not parts:
        raise ValueError("A cache key needs at least one part; got an empty sequence.")
    for part in parts:
        if not isinstance(part, str):
            raise TypeError(
                f"Every part of a cache key must be a string; {part!r} in "
                f"{key!r} is a {type(part).__name__}. Convert it with str() "
                f"first."
            )
    try:
        return ":".join(quote(part, safe="") for part in parts)
    except UnicodeEncodeError as error:
        # Text decoded with errors="surrogateescape" (file names, headers)
        # holds lone surrogates, which have no UTF-8 encoding.
        raise ValueError(
            f"Cache key {key!r} holds {error.object[error.start : error.end]!r}, "
            f"a lone surrogate that is not valid Unicode text: decode it "
            f"without errors='surrogateescape', or pass "
            f"os.fsencode(text).hex() instead."
        ) from None


def make_cache_key(
    key: KeyInput,
    *,
    prefix: str | None = None,
    namespace: str | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
) -> str:
    """Return a namespaced cache key that every backend can store.

    A string is the same key as a one-element sequence holding it.

    Args:
        key: The key, or its parts.
        prefix: Defaults to ``SYNCACHE["KEY_PREFIX"]``.
        namespace: The feature the key belongs to (``"local"``,
            ``"dogpile"``, ``"group"``, ``"spin"``), added to the prefix
            after a ``!``: keys of two features never collide, whatever
            their users name them, since the encoding never produces ``!``.
        max_length: The most bytes the result may have.

    Returns:
        ``"<prefix>[!<namespace>]:<part>:<part>..."`` with each part
        percent-encoded, or,
        when that is longer than ``max_length``, a head of it followed by
        ``#`` and its SHA-256.

    Raises:
        TypeError: ``key`` is not text or a sequence of text.
        ValueError: ``key`` is an empty sequence, a part is not valid
            Unicode (a lone surrogate), or ``max_length`` leaves no room for
            a hashed key.
    """
    if prefix is None:
        prefix = get_config().key_prefix
    if namespace is not None:
        prefix = f"{prefix}!{namespace}"
    encoded = f"{prefix}:{_encode_parts(key)}"
    if len(encoded) <= max_length:
        return encoded
    digest = hashlib.sha256(encoded.encode("ascii")).hexdigest()
    # The head keeps the whole prefix (and namespace) readable, when it fits.
    head_length = min(
        max(_HASHED_HEAD_LENGTH, len(prefix) + 1), max_length - len(digest) - 1
    )
    if head_length < len(prefix) + 1:
        raise ValueError(
            f"max_length={max_length} leaves no room for the prefix "
            f"{prefix!r} and a {len(digest)}-character hash."
        )
    return f"{encoded[:head_length]}#{digest}"
