"""What ``ubm-client segments`` prints: a file's records counted and described by segment."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ubm._jsonl import Row


@dataclass
class SegmentSummary:
    """Score rows (with ``segment``) gathered by segment; error rows are only counted."""

    probabilities: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    distances: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    ids: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    failed: int = 0

    def add(self, rows: list[Row]) -> None:
        for row in rows:
            if "error" in row:
                self.failed += 1
                continue
            segment = int(row["segment"])
            self.probabilities[segment].append(float(row["purchase_probability"]))
            self.distances[segment].append(float(row["segment_distance"]))
            self.ids[segment].add(str(row["id"]))

    @property
    def scored(self) -> int:
        return sum(len(p) for p in self.probabilities.values())

    def rows(self) -> list[dict[str, Any]]:
        """One dict per segment seen, in segment order."""
        total = self.scored or 1
        return [
            {
                "segment": segment,
                "records": len(self.probabilities[segment]),
                "ids": len(self.ids[segment]),
                "share": len(self.probabilities[segment]) / total,
                "mean_purchase_probability": statistics.fmean(self.probabilities[segment]),
                "median_distance": statistics.median(self.distances[segment]),
            }
            for segment in sorted(self.probabilities)
        ]

    def table(self) -> str:
        """The rows as an aligned text table, with a line for the records not scored."""
        lines = [
            f"{'segment':>7}  {'records':>8}  {'ids':>8}  {'share':>6}  {'mean p(buy)':>11}"
            f"  {'median distance':>15}"
        ]
        for row in self.rows():
            lines.append(
                f"{row['segment']:>7}  {row['records']:>8}  {row['ids']:>8}  {row['share']:>6.1%}"
                f"  {row['mean_purchase_probability']:>11.4f}  {row['median_distance']:>15.3f}"
            )
        lines.append(f"{self.scored} records scored, {self.failed} could not be scored")
        return "\n".join(lines)
