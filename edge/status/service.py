"""The status page as an agent service: it samples the bandwidth history every SAMPLE_EVERY seconds, and its
handle carries what the gateway and the control socket serve: the page's document (`report`) and the admin form
(`admin`)."""

import trio

from edge.service import Handle
from edge.status.admin import Admin
from edge.status.history import SAMPLE_EVERY, Meter, traffic_totals
from edge.status.report import Report
from edge.status.settings import governor_settings


class StatusHandle(Handle):
    def __init__(self, meter: Meter, report: Report, admin: Admin):
        super().__init__("status", lambda: {"minutes": len(meter.history)})
        self.meter, self.report, self.admin = meter, report, admin


async def serve_status(agent, every: float = SAMPLE_EVERY, *, task_status=trio.TASK_STATUS_IGNORED):
    """For agent (its governor, config, status, peers and store): sample the bandwidth until cancelled (counters
    only: nothing blocks); reports a StatusHandle."""
    meter = Meter(lambda: traffic_totals(agent.governor))
    admin = Admin(agent.config.data_dir, governor_settings(agent.config.config_file, agent.governor))
    task_status.started(StatusHandle(meter, Report(agent, meter), admin))
    while True:
        await trio.sleep(every)
        meter.sample()
