"""A UserBehavior CSV with its user, item and category ids replaced by keyed pseudonyms.

``ubm-build pseudonymise`` (or ``ubm-build model --pseudonym-key-file``) writes it before any
other step reads the data, so the model, its snapshot, the model repository, the reports and
every artifact only ever hold pseudonyms (`ubm.pseudonyms`). Beside it goes
``<csv>.pseudonyms.json`` with the key's fingerprint, which training records and the model
repository carries, so that the server refuses any other key.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ubm import pseudonyms

SIDECAR_SUFFIX = ".pseudonyms.json"


def sidecar(csv_path: Path) -> Path:
    return csv_path.with_name(csv_path.name + SIDECAR_SUFFIX)


def pseudonymise_csv(source: Path, out: Path, key: bytes) -> int:
    """Write `source` to `out` with pseudonymous ids (and the fingerprint beside it); returns
    the rows written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with open(source, newline="") as f, open(out, "w", newline="") as g:
        writer = csv.writer(g, lineterminator="\n")
        for user, item, category, behaviour, ts in csv.reader(f):
            writer.writerow(
                (
                    pseudonyms.pseudonym(key, "user", user),
                    pseudonyms.pseudonym(key, "item", item),
                    pseudonyms.pseudonym(key, "category", category),
                    behaviour,
                    ts,
                )
            )
            rows += 1
    described = {"key_fingerprint": pseudonyms.fingerprint(key), "rows": rows}
    sidecar(out).write_text(json.dumps(described, indent=2) + "\n")
    return rows


def key_fingerprint(csv_path: Path) -> str | None:
    """The fingerprint of the key `csv_path`'s ids were pseudonymised with; None: raw ids."""
    path = sidecar(csv_path)
    return json.loads(path.read_text())["key_fingerprint"] if path.is_file() else None
