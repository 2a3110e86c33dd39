"""Prometheus metrics and a health check, served over HTTP on WA_METRICS_ADDR: /metrics (the
text format) and /healthz (200, or 503 with why).

The instruments are updated on the event loop, by the parts that see the events; the server
answers in threads of its own. The backlog (queue depth and oldest message per session, and
expiries, which happen inside the database) comes from one SQL function: `watch_backlog` reads
it on the loop every few seconds and scrapes serve that snapshot with its age. So a scrape never
waits for the database or touches the async pool from another thread, and however often
Prometheus scrapes, the database is asked once per interval.

Labels are bounded: a session id (the sessions a poller holds, a handful), a receipt kind, a
state. Never a group or a message.
"""

import asyncio
import contextlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from poller.db import Database, Row

log = logging.getLogger(__name__)

BACKLOG_INTERVAL = 10.0  # seconds between reads of the backlog
HEALTH_STALE_AFTER = 30.0  # seconds without a beat, or an answer of the database: unhealthy
# Enqueue → sent: milliseconds when idle, seconds to minutes behind pacing (20 a minute per
# session), up to the TTL for a session that was down.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600, 14_400)
# Sent → delivered is seconds while the phones are online; read can take hours.
RECEIPT_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14_400, 86_400)


def _label(session_id: uuid.UUID) -> str:
    return str(session_id)


def _seconds_since(start: datetime, end: datetime) -> float:
    # Clamped: the clocks compared (the database's, WhatsApp's, this host's) may disagree a little.
    return max(0.0, (end - start).total_seconds())


class _Backlog(Collector):
    """Serves the last snapshot of private.outbound_backlog at scrape time."""

    def __init__(self) -> None:
        # One tuple, replaced whole: a scrape in another thread sees one snapshot or the next.
        self._snapshot: tuple[float, Sequence[Row]] | None = None

    def update(self, rows: Sequence[Row]) -> None:
        self._snapshot = (time.monotonic(), tuple(rows))

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "wa_queue_depth",
            "Queued jobs of the session's groups, in flight included",
            labels=["session"],
        )
        oldest = GaugeMetricFamily(
            "wa_queue_oldest_age_seconds",
            "Age of the session's oldest queued job (0 when none)",
            labels=["session"],
        )
        expired = CounterMetricFamily(
            "wa_messages_expired",
            "Messages failed unsent by the TTL (counted by the database)",
            labels=["session"],
        )
        snapshot = self._snapshot
        if snapshot is not None:
            at, rows = snapshot
            for row in rows:
                session = [_label(row["session_id"])]
                depth.add_metric(session, row["depth"])
                oldest.add_metric(session, row["oldest_age_seconds"])
                expired.add_metric(session, row["expired"])
            yield GaugeMetricFamily(
                "wa_queue_snapshot_age_seconds",
                "Seconds since the backlog above was read from the database",
                value=time.monotonic() - at,
            )
        yield from (depth, oldest, expired)


class Health:
    """What /healthz answers: healthy while the main loop beats and the database answers, each
    within `stale_after` seconds. The loop calls `beat()`; whoever sees the database answer, or
    fail, calls `database()`. Read from the server's threads: each state is one attribute."""

    def __init__(self, stale_after: float = HEALTH_STALE_AFTER) -> None:
        self.stale_after = stale_after
        self._beat: float | None = None
        self._database: tuple[float, str | None] | None = None  # when, what is wrong

    def beat(self) -> None:
        self._beat = time.monotonic()

    def beating(self, within: float) -> bool:
        """Whether the loop beat in the last `within` seconds (the watchdog's question)."""
        return self._beat is not None and time.monotonic() - self._beat < within

    def database(self, ok: bool, reason: str = "not answering") -> None:
        """The database answered (`ok`), or did not (`reason`); a failure stays until an
        answer."""
        self._database = (time.monotonic(), None if ok else reason)

    def problem(self) -> str | None:
        """Why the poller is unhealthy, or None."""
        now = time.monotonic()
        if self._beat is None:
            return "main loop not started"
        if now - self._beat > self.stale_after:
            return f"main loop silent for {now - self._beat:.0f} s"
        if self._database is None:
            return "database not reached yet"
        at, wrong = self._database
        if wrong is not None:
            return f"database: {wrong}"
        if now - at > self.stale_after:
            return f"database: no answer for {now - at:.0f} s"
        return None


class Metrics:
    """The poller's instruments, in a registry of their own (a test may make several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        by_session = ["session"]
        self._sent = Counter(
            "wa_messages_sent", "Messages WhatsApp accepted", by_session, registry=r
        )
        self._failed = Counter(
            "wa_messages_failed", "Sends that failed for good", by_session, registry=r
        )
        self._retried = Counter(
            "wa_send_retries", "Transient send failures, tried again later", by_session, registry=r
        )
        self._latency = Histogram(
            "wa_send_latency_seconds",
            "From enqueue to WhatsApp's acceptance",
            by_session,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._receipt_lag = Histogram(
            "wa_receipt_lag_seconds",
            "From sent to a delivered or read receipt (per participant in groups)",
            ["kind"],
            buckets=RECEIPT_BUCKETS,
            registry=r,
        )
        self._state = Gauge(
            "wa_session_state",
            "1 for the session's current state (one series per session held)",
            ["session", "state"],
            registry=r,
        )
        self._states: dict[uuid.UUID, str] = {}
        self._reconnects = Counter(
            "wa_session_reconnects", "Connections made again after a loss", by_session, registry=r
        )
        self._worker_restarts = Counter(
            "wa_worker_restarts", "Session worker processes restarted", by_session, registry=r
        )
        self._retry_receipts = Counter(
            "wa_retry_receipts",
            "Retry receipts: a participant could not decrypt a message",
            by_session,
            registry=r,
        )
        self._backlog = _Backlog()
        r.register(self._backlog)

    def sent(self, session_id: uuid.UUID, enqueued_at: datetime) -> None:
        """WhatsApp accepted a message queued at `enqueued_at` (timezone-aware)."""
        session = _label(session_id)
        self._sent.labels(session).inc()
        self._latency.labels(session).observe(_seconds_since(enqueued_at, datetime.now(UTC)))

    def failed(self, session_id: uuid.UUID) -> None:
        self._failed.labels(_label(session_id)).inc()

    def retried(self, session_id: uuid.UUID) -> None:
        self._retried.labels(_label(session_id)).inc()

    def receipt(self, kind: str, sent_at: datetime, at: datetime) -> None:
        """A `kind` (delivered, read) receipt at `at` for a message sent at `sent_at`."""
        self._receipt_lag.labels(kind).observe(_seconds_since(sent_at, at))

    def session_state(self, session_id: uuid.UUID, state: str) -> None:
        """The session is now in `state`: its one state series moves there."""
        session = _label(session_id)
        previous = self._states.get(session_id)
        if previous == state:
            return
        if previous is not None:
            self._state.remove(session, previous)
        self._state.labels(session, state).set(1)
        self._states[session_id] = state

    def session_released(self, session_id: uuid.UUID) -> None:
        """This poller no longer holds the session: its state series goes (its counters stay)."""
        previous = self._states.pop(session_id, None)
        if previous is not None:
            self._state.remove(_label(session_id), previous)

    def reconnected(self, session_id: uuid.UUID) -> None:
        self._reconnects.labels(_label(session_id)).inc()

    def worker_restarted(self, session_id: uuid.UUID) -> None:
        self._worker_restarts.labels(_label(session_id)).inc()

    def retry_receipt(self, session_id: uuid.UUID) -> None:
        self._retry_receipts.labels(_label(session_id)).inc()

    async def watch_backlog(
        self,
        db: Database,
        me: str,
        health: Health,
        stop: asyncio.Event,
        interval: float = BACKLOG_INTERVAL,
    ) -> None:
        """Until `stop`: read the backlog of the sessions poller `me` holds every `interval` s;
        each answer also tells `health` that the database answers. A failed read keeps the last
        snapshot (its age shows it) and is tried again at the next interval."""
        while not stop.is_set():
            try:
                self._backlog.update(await db.fetch("outbound_backlog", {"me": me}))
            except Exception as exc:  # metrics must never stop the sending
                log.warning("reading the backlog for /metrics failed: %s", exc)
            else:
                health.database(True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    timeout = 10  # seconds: a client that stops sending its request frees its thread

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path == "/metrics":
            self._reply(200, CONTENT_TYPE_LATEST, generate_latest(self.server.registry))
        elif path == "/healthz":
            problem = self.server.health.problem()
            body = f"{problem or 'ok'}\n".encode()
            self._reply(503 if problem else 200, "text/plain; charset=utf-8", body)
        else:
            self._reply(404, "text/plain; charset=utf-8", b"not found: /metrics, /healthz\n")

    def _reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # a scrape every few seconds would fill the journal


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung client never holds up close()

    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: Health) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.registry = registry
        self.health = health
        super().__init__((host, port), _Handler)


class MetricsServer:
    """Serves /metrics and /healthz on host:port (port 0: any free one) from a thread, from
    construction until `close()`."""

    def __init__(self, host: str, port: int, metrics: Metrics, health: Health) -> None:
        self._server = _Server(host, port, metrics.registry, health)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def close(self) -> None:
        """Stop serving and free the port; returns when the server's thread has ended."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
