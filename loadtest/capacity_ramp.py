"""The capacity ramp under Locust in this process: each user count held for a measured step.

Locust runs as ``locust.env.Environment`` with a local runner and the locustfile's `UbmUser`.
Every latency of a step's successful requests is kept, rather than Locust's rounded histogram.
Import this only after ``locust`` (which patches the process for gevent): `capacity.py` does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from capacity_settings import CapacitySettings
from capacity_steps import Step, describe, measure, stop_reason
from refusals import REFUSED_TYPE, RefusedRequest

SPAWN_RATE = 50.0
"""Users started per second: a step's users all run well before its warm-up ends."""


class StepRecorder:
    """A Locust request listener that keeps what ends while it records: latencies and failures."""

    def __init__(self) -> None:
        self.recording = False
        self.latencies_ms: list[float] = []
        """Of the successful requests."""
        self.failures = 0
        self.first_failure: BaseException | None = None

    def start(self) -> None:
        """Forget the previous step and record from now."""
        self.latencies_ms = []
        self.failures = 0
        self.first_failure = None
        self.recording = True

    def stop(self) -> None:
        self.recording = False

    def on_request(
        self,
        response_time: float,
        exception: BaseException | None = None,
        request_type: str = "",
        name: str = "",
        **_kwargs: object,
    ) -> None:
        if not self.recording:
            return
        refused = request_type == REFUSED_TYPE
        if exception is None and not refused:
            self.latencies_ms.append(response_time)
            return
        # A refusal ends the ramp like a failure: the server is past what it can hold.
        self.failures += 1
        if self.first_failure is None:
            self.first_failure = RefusedRequest(name) if refused else exception


def run_steps(
    url: str,
    user_counts: Sequence[int],
    settings: CapacitySettings,
    log: Callable[[str], None],
) -> tuple[list[Step], str]:
    """Hold each of `user_counts` in turn until a step stops the ramp; (steps, why it stopped)."""
    import gevent
    import locustfile
    from locust.env import Environment

    user_class = type(
        "CapacityUser",
        (locustfile.UbmUser,),
        {"batch_size": settings.batch_size, "records_file": settings.records_file},
    )
    env = Environment(user_classes=[user_class], host=url)
    runner = env.create_local_runner()
    recorder = StepRecorder()
    env.events.request.add_listener(recorder.on_request)
    steps: list[Step] = []
    reason = f"reached the last step ({user_counts[-1]} users) within the SLO"
    try:
        for users in user_counts:
            runner.start(users, spawn_rate=SPAWN_RATE)
            gevent.sleep(settings.warmup_seconds)
            recorder.start()
            started, cpu_started = time.perf_counter(), time.process_time()
            gevent.sleep(settings.step_seconds)
            recorder.stop()
            elapsed = time.perf_counter() - started
            cpu_percent = 100.0 * (time.process_time() - cpu_started) / elapsed
            if recorder.first_failure is not None:
                log(f"  first failure at {users} users: {recorder.first_failure!r}"[:300])
            step = measure(
                users,
                recorder.latencies_ms,
                recorder.failures,
                elapsed,
                settings.batch_size,
                settings.slo_ms,
                locust_cpu_percent=round(cpu_percent, 1),
            )
            steps.append(step)
            log(describe(step))
            stopped = stop_reason(step, settings.slo_ms)
            if stopped:
                reason = stopped
                break
    finally:
        runner.quit()
    return steps, reason
