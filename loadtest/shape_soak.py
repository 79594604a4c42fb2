"""Locust load shape: stages.SOAK (see there).

Run it beside the locustfile: ``locust -f loadtest/locustfile.py,loadtest/shape_soak.py ...``.
"""

from locust import LoadTestShape
from stages import SOAK, tick_at


class SoakShape(LoadTestShape):
    stages = SOAK

    def tick(self):
        return tick_at(self.stages, self.get_run_time())
