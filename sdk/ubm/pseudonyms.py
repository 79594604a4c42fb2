"""Keyed pseudonyms: user, item and category ids replaced by HMAC-SHA256 digests.

With a key the operator holds, ``ubm-build pseudonymise`` rewrites the training data's ids
before anything else reads them, and the server's ``preprocess`` rewrites the ids of every
record it receives with the same key, so the model only ever sees pseudonyms. A client may
also send ids it pseudonymised itself (`pseudonymise_record`): a pseudonym is recognisable
(`is_pseudonym`) and left as it is, so both give the same score.

A pseudonym is ``p`` and 12 decimal digits: short enough to cost about the tokens of a raw
Taobao id in the behaviour text. Without the key, an id cannot be turned into its pseudonym
or back. The key's `fingerprint` (itself an HMAC, which reveals nothing of the key) lets a
server check it was given the key the model was built with.

This module imports only the standard library: the build copies it next to ``preprocess``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

KEY_FILE_ENV = "UBM_PSEUDONYM_KEY_FILE"
"""The environment variable that tells the server's ``preprocess`` where the key file is."""
KINDS = ("user", "item", "category")
PREFIX = "p"
DIGITS = 12
MIN_KEY_BYTES = 32


class PseudonymKeyError(ValueError):
    """The key file is missing, too open, or too short; the message says which."""


def read_key(path: Path | str) -> bytes:
    """The key in `path` (surrounding whitespace dropped).

    Raises:
        PseudonymKeyError: unreadable, open to others (not owner or group), or shorter than
            `MIN_KEY_BYTES`.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        key = path.read_bytes().strip()
    except OSError as e:
        raise PseudonymKeyError(f"pseudonym key file {path}: {e.strerror}") from e
    if mode & stat.S_IRWXO:
        raise PseudonymKeyError(
            f"pseudonym key file {path}: others may read it; make it owner-only"
            f" (chmod 600 {path}), or owner and group (640, as a Kubernetes Secret with fsGroup)"
        )
    if len(key) < MIN_KEY_BYTES:
        raise PseudonymKeyError(
            f"pseudonym key file {path}: the key must have {MIN_KEY_BYTES} bytes or more"
            " (e.g. openssl rand -hex 32)"
        )
    return key


def key_from_env(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The key in the file `KEY_FILE_ENV` names, or None when it is not set."""
    environ = os.environ if environ is None else environ
    path = environ.get(KEY_FILE_ENV)
    return read_key(path) if path else None


def fingerprint(key: bytes) -> str:
    """A short public name of `key`: equal fingerprints mean equal keys."""
    return hmac.new(key, b"ubm pseudonym key fingerprint", hashlib.sha256).hexdigest()[:16]


def is_pseudonym(value: str) -> bool:
    return len(value) == DIGITS + 1 and value[0] == PREFIX and value[1:].isdigit()


def pseudonym(key: bytes, kind: str, value: str) -> str:
    """`value`'s pseudonym as a `kind` id; a pseudonym and the empty id stay as they are."""
    if not value or is_pseudonym(value):
        return value
    digest = hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).digest()
    return PREFIX + str(int.from_bytes(digest[:8], "big") % 10**DIGITS).zfill(DIGITS)


def pseudonymise_record(record: Mapping[str, Any], key: bytes) -> dict[str, Any]:
    """A JSON record with its events' item and category ids pseudonymised; the record's own
    ``id`` (the caller's handle, echoed back) is kept."""
    events = [
        {
            **event,
            "item": pseudonym(key, "item", str(event["item"])),
            **(
                {"category": pseudonym(key, "category", str(event["category"]))}
                if event.get("category") not in (None, "")
                else {}
            ),
        }
        for event in record["events"]
    ]
    return {**record, "events": events}
