"""What the checks report: problems at JSON paths, and the errors that stop a check."""

from __future__ import annotations

import re
from dataclasses import dataclass

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


class DeployError(Exception):
    """The checks cannot run: helm, the chart, a values file or the kserve wheel is missing."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a document: where (a JSON path such as ``$.spec.replicas``), what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def child(path: str, key: str | int) -> str:
    """`path` one level down: ``$.spec`` + ``"replicas"``, ``$.items`` + ``0`` -> ``$.items[0]``;
    keys that are not plain names are quoted (``$.metadata.annotations['prometheus.io/port']``)."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if _PLAIN_KEY.fullmatch(key) else f"{path}[{key!r}]"
