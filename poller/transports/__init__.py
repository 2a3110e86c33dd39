"""WhatsApp transports behind one interface: `simulated` (deterministic, for the demo, tests and
benchmarks) and `neonize` (real WhatsApp through whatsmeow), each either in the poller's process
or with every session's client in a worker process of its own (poller/transports/worker.py)."""

import os

from poller.settings import Settings
from poller.transports.base import Transport

# Until Settings has it: 1 or 0; unset, workers for neonize only (its Go core must not hold two
# clients in one process), the simulated transport in-process (the tests', demo's, benches' speed).
WORKERS_VARIABLE = "WA_SESSION_WORKERS"


def make_transport(settings: Settings, workers: bool | None = None) -> Transport:
    if workers is None:
        chosen = os.environ.get(WORKERS_VARIABLE)
        workers = settings.transport == "neonize" if chosen is None else chosen == "1"
    if workers:
        from poller.transports.worker import WorkerTransport

        return WorkerTransport(settings)
    if settings.transport == "simulated":
        from poller.transports.simulated import SimulatedTransport

        return SimulatedTransport(settings)
    from poller.transports.neonize import NeonizeTransport

    return NeonizeTransport(settings)
