"""`Score`: what the model answers for one record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Score:
    """The model's answer for one record.

    Attributes:
        id: the record's id.
        purchase_probability: P(the user buys before the current session ends).
        embedding: the user representation, when it was asked for.
    """

    id: str
    purchase_probability: float
    embedding: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form; ``embedding`` is present only when it was asked for."""
        row: dict[str, Any] = {"id": self.id, "purchase_probability": self.purchase_probability}
        if self.embedding is not None:
            row["embedding"] = list(self.embedding)
        return row
