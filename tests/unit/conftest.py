"""The unit tier: no tritonserver, no torch model, no whole CSV.

The session fixtures of ``tests/conftest.py`` that build or read those are for the integration
tier; a unit test that asks for one is a collection error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ubm.records import EVENT_TYPES
from ubm_build.inputs.snapshot import FILE, Snapshot

INTEGRATION_FIXTURES = frozenset(
    {"examples", "tiny_model", "tiny_onnx", "tiny_repository", "triton"}
)
UNIT_DIR = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if UNIT_DIR in Path(item.path).parents:
            wanted = INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ()))
            if wanted:
                raise pytest.UsageError(
                    f"{item.nodeid} is a unit test but asks for {sorted(wanted)}: move it to"
                    " tests/integration/ or give it small data of its own"
                )


SNAPSHOT_AS_OF = 1_512_144_000
"""2017-12-02 00:00 China time: the as-of time of `snapshot_file`."""


@pytest.fixture(scope="session")
def small_snapshot() -> Snapshot:
    """A snapshot of hand-made events in the 30 hours before `SNAPSHOT_AS_OF`: users 0 to 2
    each view, cart, fav or buy items 100 to 104 (category 7) and 1000 to 1004 (category 8);
    104 and 1004 are bought. Any other id is unseen."""
    kinds = ("view", "view", "cart", "fav", "buy")
    events = [
        (SNAPSHOT_AS_OF - 3600 * (1 + i), user, item, "7" if item < 1000 else "8", kinds[i % 5])
        for i, (user, item) in enumerate(
            (u, item) for u in range(3) for item in (*range(100, 105), *range(1000, 1005))
        )
    ]
    ts, users, items, categories, kinds_ = zip(*events, strict=True)
    return Snapshot.from_events(
        SNAPSHOT_AS_OF,
        ts=np.array(ts, dtype=np.int64),
        users=np.array(users, dtype=np.int64),
        items=np.array([str(i) for i in items]),
        categories=np.array(categories),
        types=np.array([EVENT_TYPES.index(k) for k in kinds_], dtype=np.int64),
    )


@pytest.fixture(scope="session")
def snapshot_file(small_snapshot, tmp_path_factory) -> Path:
    """`small_snapshot` saved, for what reads a snapshot file (a repository write)."""
    path = tmp_path_factory.mktemp("snapshot") / FILE
    small_snapshot.save(path)
    return path
