"""Encryption at rest: the keyring of ``ENCRYPTION_KEYS`` and sealed values.

``ENCRYPTION_KEYS`` is a comma-separated list of Fernet keys (32 url-safe
base64-encoded bytes each, as ``switchboard keygen`` prints them). The first
key seals everything written from now on; every key in the list opens what
it sealed (``MultiFernet``), so keys rotate without re-writing old data: add
the new key in front, restart, and what the old key sealed stays readable as
long as the old key stays in the list.

A *sealed* text is ``f1:`` followed by a Fernet token (AES-128-CBC and
HMAC-SHA256; the token also carries the time it was made, in the clear)::

    f1:gAAAAABm...==

The prefix names the scheme (``f1``: Fernet, version 1), so a reader tells a
sealed value from plain text written before encryption was turned on, and
a later scheme can take ``f2:`` without a flag day. A text counts as sealed
only when the whole of it has a token's form (alphabet, version byte, a
length Fernet can produce), so a user's message that merely begins with
``f1:`` is plain text. Only a message that is itself a well-formed token,
written while encryption was off, would be mistaken for one: it then fails to
open (below) instead of being shown.

:meth:`Keyring.open` returns plain text as it is (mixed data after turning
encryption on), opens sealed text with any key of the list, and raises
:class:`CannotOpen` when none opens it -- its key was removed, it was altered,
or no keys are configured at all. Callers turn that into a clear failure (a
dead-lettered turn, an ``unreadable`` error frame); ciphertext is never shown
as text. Without keys nothing is sealed and storage is byte for byte what it
was without this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .errors import SwitchboardError

#: What every sealed value begins with (scheme ``f1``: Fernet).
PREFIX = "f1:"

# A Fernet token: url-safe base64 (padded), the version byte 0x80 ("gA"), and
# the top bytes of a 64-bit timestamp, zero until the year 2106 ("AAAA").
_TOKEN = re.compile(r"gAAAAA[A-Za-z0-9_-]*={0,2}\Z")
#: Bytes of the smallest token: version 1, time 8, IV 16, one AES block 16, HMAC 32.
_MIN_TOKEN_BYTES = 73
_TOKEN_OVERHEAD = 57  #: the bytes around the ciphertext, which is whole AES blocks


class CannotOpen(SwitchboardError):
    """A sealed value none of the configured keys opens: sealed with a key
    no longer in ENCRYPTION_KEYS, altered, or read with no keys at all."""


class InvalidKey(SwitchboardError, ValueError):
    """An ENCRYPTION_KEYS entry is not a Fernet key (the message names its
    position, never the key)."""


def is_sealed(text: str) -> bool:
    """Whether ``text`` is a sealed value (see the module notes)."""
    if not text.startswith(PREFIX):
        return False
    token = text[len(PREFIX):]
    if len(token) % 4 or not _TOKEN.match(token):
        return False
    padding = 2 if token.endswith("==") else 1 if token.endswith("=") else 0
    size = len(token) // 4 * 3 - padding
    return size >= _MIN_TOKEN_BYTES and (size - _TOKEN_OVERHEAD) % 16 == 0


def generate_key() -> str:
    """A new random key for ENCRYPTION_KEYS."""
    return Fernet.generate_key().decode("ascii")


class Keyring:
    """The keys of ENCRYPTION_KEYS: the first seals, all open.

    An empty keyring (no ENCRYPTION_KEYS) seals nothing: :meth:`seal` returns
    its text unchanged, and the serializer writes checkpoints as before.
    """

    __slots__ = ("_fernet", "size")

    def __init__(self, keys: Iterable[str] = ()):
        keys = list(keys)
        fernets = []
        for position, key in enumerate(keys, 1):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError):
                # ``from None``: the library's error may quote the input.
                raise InvalidKey(f"key {position} of {len(keys)} is not a Fernet key (32 url-safe "
                                 "base64-encoded bytes; `switchboard keygen` prints one)") from None
        self._fernet = MultiFernet(fernets) if fernets else None
        self.size = len(fernets)  #: how many keys (never which)

    def __repr__(self) -> str:  # settings objects are printed; keys never are
        return f"Keyring({self.size} key{'' if self.size == 1 else 's'})"

    @property
    def enabled(self) -> bool:
        """Whether new data is sealed (ENCRYPTION_KEYS is set)."""
        return self._fernet is not None

    # -- text (stream fields) ---------------------------------------------------------

    def seal(self, text: str) -> str:
        """``text`` sealed with the first key; unchanged without keys."""
        if self._fernet is None:
            return text
        return self.seal_bytes(text.encode())

    def open(self, text: str) -> str:
        """The plain text of a stored value: ``text`` itself when it is not
        sealed, else opened (:class:`CannotOpen` if no key opens it)."""
        if not is_sealed(text):
            return text
        try:
            return self.open_bytes(text).decode()
        except UnicodeDecodeError:  # sealed bytes that were never text: not ours
            raise CannotOpen("the sealed value is not text") from None

    # -- bytes (checkpoint envelopes) -----------------------------------------------------

    def seal_bytes(self, data: bytes) -> str:
        """``data`` sealed with the first key, as text (``f1:...``). Needs keys."""
        if self._fernet is None:
            raise CannotOpen("cannot seal: ENCRYPTION_KEYS is not set")
        return PREFIX + self._fernet.encrypt(data).decode("ascii")

    def open_bytes(self, sealed: str) -> bytes:
        """The bytes a :meth:`seal_bytes` value holds, or :class:`CannotOpen`."""
        if self._fernet is None:
            raise CannotOpen("a sealed value was read, but ENCRYPTION_KEYS is not set")
        if not sealed.startswith(PREFIX):
            raise CannotOpen("not a sealed value")
        try:
            return self._fernet.decrypt(sealed[len(PREFIX):])
        except InvalidToken:
            raise CannotOpen(f"no key of ENCRYPTION_KEYS ({self.size}) opens a sealed value: its key was "
                             "removed from the list, or the value was altered") from None
