"""Locust load shape: stages.STEP_RAMP (see there).

Run it beside the locustfile: ``locust -f loadtest/locustfile.py,loadtest/shape_step_ramp.py ...``.
"""

from locust import LoadTestShape
from stages import STEP_RAMP, tick_at


class StepRampShape(LoadTestShape):
    stages = STEP_RAMP

    def tick(self):
        return tick_at(self.stages, self.get_run_time())
