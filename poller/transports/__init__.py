"""WhatsApp transports behind one interface: `simulated` (deterministic, for the demo, tests and
benchmarks) and `neonize` (real WhatsApp through whatsmeow)."""

from poller.settings import Settings
from poller.transports.base import Transport


def make_transport(settings: Settings) -> Transport:
    if settings.transport == "simulated":
        from poller.transports.simulated import SimulatedTransport

        return SimulatedTransport(settings)
    from poller.transports.neonize import NeonizeTransport

    return NeonizeTransport(settings)
