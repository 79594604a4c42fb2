"""The load shapes as data: lists of stages, each holding a user count for a while.

`shape_step_ramp.py`, `shape_spike.py` and `shape_soak.py` wrap these in Locust
`LoadTestShape` classes. Every shape is bounded in users and in time, and ends by itself.
This module imports no Locust, so the tests can check the schedules directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MAX_USERS = 64
"""No shape asks for more users than this: one Locust process on the same small machine as
the server would saturate itself, not the server, beyond it."""
MAX_SECONDS = 600


@dataclass(frozen=True)
class Stage:
    seconds: float
    """How long this stage lasts."""
    users: int
    spawn_rate: float
    """Users started (or stopped) per second on the way to `users`."""


def schedule_end(stages: Sequence[Stage]) -> float:
    return sum(stage.seconds for stage in stages)


def tick_at(stages: Sequence[Stage], run_time: float) -> tuple[int, float] | None:
    """(users, spawn rate) at `run_time` seconds into the test; None once the stages are over."""
    elapsed = 0.0
    for stage in stages:
        elapsed += stage.seconds
        if run_time < elapsed:
            return stage.users, stage.spawn_rate
    return None


STEP_RAMP = tuple(Stage(seconds=15, users=users, spawn_rate=users) for users in (1, 2, 4, 8, 16))
"""1, 2, 4, 8 then 16 users, 15 s each (75 s): where latency starts to climb."""

SPIKE = (
    Stage(seconds=20, users=2, spawn_rate=2),
    Stage(seconds=10, users=32, spawn_rate=32),
    Stage(seconds=30, users=2, spawn_rate=32),
)
"""2 users, a sudden jump to 32 for 10 s, then back to 2 for 30 s (60 s): does the queue
drain and latency return to where it was?"""

SOAK = (Stage(seconds=180, users=4, spawn_rate=1),)
"""4 users for 3 minutes: a short soak, for drifting latency or memory under steady load."""

SHAPES = {"step_ramp": STEP_RAMP, "spike": SPIKE, "soak": SOAK}
