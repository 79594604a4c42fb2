"""Taobao UserBehavior events -> labelled session examples in time windows (`taobao`).

Imports `paths` and `inputs` (the session gap).
"""

from ubm_build.data.taobao import (
    CHINA,
    DEFAULT_CSV,
    WINDOWS,
    Example,
    examples_by_window,
    make_examples,
    read_events,
    user_examples,
    write_jsonl,
)

__all__ = [
    "CHINA",
    "DEFAULT_CSV",
    "WINDOWS",
    "Example",
    "examples_by_window",
    "make_examples",
    "read_events",
    "user_examples",
    "write_jsonl",
]
