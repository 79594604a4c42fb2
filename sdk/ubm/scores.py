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
        segment: the user's segment (the nearest of the model's k-means centroids), when it
            was asked for.
        segment_distance: the distance to that centroid (how typical the user is of it).
    """

    id: str
    purchase_probability: float
    embedding: tuple[float, ...] | None = None
    segment: int | None = None
    segment_distance: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form; ``embedding`` and the segment's two fields are present
        only when they were asked for."""
        row: dict[str, Any] = {"id": self.id, "purchase_probability": self.purchase_probability}
        if self.segment is not None:
            row["segment"] = self.segment
            row["segment_distance"] = self.segment_distance
        if self.embedding is not None:
            row["embedding"] = list(self.embedding)
        return row
