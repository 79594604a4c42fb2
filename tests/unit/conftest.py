"""The unit tier: no tritonserver, no torch model, no whole CSV.

The session fixtures of ``tests/conftest.py`` that build or read those are for the integration
tier; a unit test that asks for one is a collection error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
