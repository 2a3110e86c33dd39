"""WhatsApp transports behind one interface: `simulated` (deterministic, for the demo, tests and
benchmarks) and `neonize` (real WhatsApp through whatsmeow), each either in the poller's process
or with every session's client in a worker process of its own (poller/transports/worker.py)."""

from poller.settings import Settings
from poller.transports.base import Transport


def make_transport(settings: Settings, workers: bool | None = None) -> Transport:
    if workers is None:
        chosen = settings.session_workers
        workers = settings.transport == "neonize" if chosen is None else chosen
    if workers:
        from poller.transports.worker import WorkerTransport

        return WorkerTransport(settings)
    if settings.transport == "simulated":
        from poller.transports.simulated import SimulatedTransport

        return SimulatedTransport(settings)
    from poller.transports.neonize import NeonizeTransport

    return NeonizeTransport(settings)
