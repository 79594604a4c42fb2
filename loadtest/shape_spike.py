"""Locust load shape: stages.SPIKE (see there).

Run it beside the locustfile: ``locust -f loadtest/locustfile.py,loadtest/shape_spike.py ...``.
"""

from locust import LoadTestShape
from stages import SPIKE, tick_at


class SpikeShape(LoadTestShape):
    stages = SPIKE

    def tick(self):
        return tick_at(self.stages, self.get_run_time())
