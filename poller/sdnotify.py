"""systemd's service notifications (sd_notify(3)) over $NOTIFY_SOCKET, without libsystemd.

deploy/wa-poller.service is Type=notify with WatchdogSec=: systemd takes the poller as started
at READY=1, and aborts and restarts it when no WATCHDOG=1 has come for WatchdogSec. Outside
systemd ($NOTIFY_SOCKET unset) every call does nothing.

What the daemon does with it:
- `Notifier.from_environ()` once, before it starts any worker process: it takes NOTIFY_SOCKET,
  WATCHDOG_USEC and WATCHDOG_PID out of the environment, so that the session workers do not
  inherit them (with NotifyAccess=main systemd would ignore them anyway).
- `ready()` after the first database contact (`db.open()` returned). Until then systemd's
  TimeoutStartSec bounds the start.
- `keep_alive(notifier, alive, stop)` as a task from `ready()` on; see its contract.
- `status(text)`, optional: the line `systemctl status` shows (the stats line, say).
- `stopping()` as soon as the stop begins, whatever its cause. systemd's watchdog ends there
  (TimeoutStopSec bounds the stop), so nothing needs pinging during the shutdown.
"""

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, MutableMapping

log = logging.getLogger(__name__)

# A full receive queue on systemd's side blocks a send: it waits this long at most (on the
# event loop), then the message is dropped and logged.
SEND_TIMEOUT = 1.0


class Notifier:
    """Sends notifications to `socket_path` (a path, or `@name` for an abstract socket); with
    None every call is a no-op. `watchdog_interval` is WatchdogSec in seconds, None when this
    process has no watchdog. Each call returns whether its datagram was sent; a failure is
    logged, never raised."""

    def __init__(self, socket_path: str | None, watchdog_interval: float | None = None) -> None:
        self.watchdog_interval = watchdog_interval
        self._address = _address(socket_path) if socket_path else None

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> "Notifier":
        """From $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID, which it removes from
        `environ` (the process's environment by default)."""
        env = os.environ if environ is None else environ
        socket_path = env.pop("NOTIFY_SOCKET", None)
        usec = env.pop("WATCHDOG_USEC", None)
        pid = env.pop("WATCHDOG_PID", None)
        return cls(socket_path, _watchdog_interval(usec, pid))

    def ready(self) -> bool:
        return self._send("READY=1")

    def watchdog(self) -> bool:
        """WATCHDOG=1, only when this process has a watchdog."""
        return self.watchdog_interval is not None and self._send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self._send("STOPPING=1")

    def status(self, text: str) -> bool:
        # A newline would end the assignment and start another one.
        return self._send("STATUS=" + " ".join(text.splitlines()))

    def _send(self, message: str) -> bool:
        if self._address is None:
            return False
        try:
            # A socket per message, as libsystemd does: it outlives a restart of systemd's
            # listener. Connected, so that the timeout waits for room in systemd's queue.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(SEND_TIMEOUT)
                sock.connect(self._address)
                sock.send(message.encode())
        except OSError as exc:
            log.warning("could not notify systemd of %s: %s", message.partition("=")[0], exc)
            return False
        return True


def _address(socket_path: str) -> str | None:
    if socket_path.startswith("@"):
        return "\0" + socket_path[1:]  # Linux's abstract namespace
    if socket_path.startswith("/"):
        return socket_path
    log.warning("NOTIFY_SOCKET=%s is neither a path nor @name: not notifying systemd", socket_path)
    return None


def _watchdog_interval(usec: str | None, pid: str | None) -> float | None:
    """WatchdogSec in seconds, or None: no watchdog, or one meant for another process (the
    variables were inherited)."""
    if not usec or (pid is not None and pid != str(os.getpid())):
        return None
    try:
        interval = int(usec)
    except ValueError:
        interval = 0
    if interval <= 0:
        log.warning("WATCHDOG_USEC=%s is not a positive integer: no watchdog pings", usec)
        return None
    return interval / 1_000_000


async def keep_alive(notifier: Notifier, alive: Callable[[], bool], stop: asyncio.Event) -> None:
    """Send WATCHDOG=1 every half watchdog interval while `alive()` says so, until `stop` is set.

    Returns at once when the process has no watchdog (outside systemd, no WatchdogSec=). The
    first check comes half an interval after the start.

    `alive()` is called on the event loop once a period; it must be quick, must not block and
    should not raise (an exception ends this task, and the pings with it). It answers whether
    the main loop has made progress recently: typically the loop stamps `loop.time()` at every
    turn and `alive` is `lambda: loop.time() - last_turn < grace`, where `grace` is longer than
    the longest healthy turn (the longest wait in it included). A false answer withholds the
    ping; systemd aborts the poller (SIGABRT) at the latest WatchdogSec after the last one, so a
    loop stuck since time t is restarted by t + grace + WatchdogSec. A blocked event loop stops
    the pings by itself, since this task cannot run either. A database outage that the code is
    retrying is no hang (a restart cannot help): count a retry as progress.
    """
    if notifier.watchdog_interval is None:
        return
    period = notifier.watchdog_interval / 2
    stalled = False
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=period)
        if stop.is_set():
            return
        if alive():
            if stalled:
                log.warning("the main loop is making progress again: watchdog pings resumed")
            stalled = False
            notifier.watchdog()
        elif not stalled:
            log.error(
                "the main loop has made no progress: watchdog pings withheld, systemd will "
                "restart the poller"
            )
            stalled = True
