"""WhatsApp transports behind one interface: `simulated` (deterministic, for the demo, tests and
benchmarks) and, next, `neonize` (real WhatsApp through whatsmeow)."""

from poller.settings import Settings
from poller.transports.base import Transport


def make_transport(settings: Settings) -> Transport:
    if settings.transport == "simulated":
        from poller.transports.simulated import SimulatedTransport

        return SimulatedTransport(settings)
    raise NotImplementedError(f"transport {settings.transport!r} is not available yet")
