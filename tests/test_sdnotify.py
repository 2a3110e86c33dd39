"""poller/sdnotify.py against a datagram socket the test listens on, as systemd's would be."""

import asyncio
import logging
import os
import socket
import uuid

import pytest

from poller.sdnotify import Notifier, keep_alive

WATCHDOG_USEC = 200_000  # 0.2 s: a ping every 0.1 s


@pytest.fixture
def listener(tmp_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        path = tmp_path / "notify"
        sock.bind(str(path))
        yield sock, str(path)


@pytest.fixture
def abstract_listener():
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        name = f"wa-poller-test-{uuid.uuid4()}"
        sock.bind("\0" + name)
        yield sock, "@" + name


def received(sock: socket.socket) -> list[bytes]:
    """The datagrams waiting on `sock`, without waiting for more."""
    datagrams = []
    while True:
        try:
            datagrams.append(sock.recv(4096, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return datagrams


def watched_environ(path: str, pid: int | None = None) -> dict[str, str]:
    return {
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        "WATCHDOG_PID": str(os.getpid() if pid is None else pid),
        "OTHER": "kept",
    }


def test_exact_datagrams_over_a_path_socket(listener):
    sock, path = listener
    environ = watched_environ(path)
    notifier = Notifier.from_environ(environ)
    assert environ == {"OTHER": "kept"}  # the session workers do not inherit them
    assert notifier.watchdog_interval == 0.2
    assert notifier.ready()
    assert notifier.status("sent 3\nfailed 0")
    assert notifier.watchdog()
    assert notifier.stopping()
    assert received(sock) == [
        b"READY=1",
        b"STATUS=sent 3 failed 0",
        b"WATCHDOG=1",
        b"STOPPING=1",
    ]


def test_abstract_socket(abstract_listener):
    sock, name = abstract_listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": name})
    assert notifier.ready()
    assert notifier.status("connected")
    assert received(sock) == [b"READY=1", b"STATUS=connected"]


def test_no_socket_is_a_noop():
    notifier = Notifier.from_environ({})
    assert notifier.watchdog_interval is None
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert not notifier.status("x")
    assert not notifier.stopping()

    async def scenario() -> None:  # returns at once although nothing stops it
        await asyncio.wait_for(keep_alive(notifier, lambda: True, asyncio.Event()), 1.0)

    asyncio.run(scenario())


def test_watchdog_meant_for_another_process(listener):
    sock, path = listener
    notifier = Notifier.from_environ(watched_environ(path, pid=os.getpid() + 1))
    assert notifier.watchdog_interval is None
    assert not notifier.watchdog()
    assert notifier.ready()  # the socket is still the service's
    assert received(sock) == [b"READY=1"]


@pytest.mark.parametrize(
    ("usec", "pid", "interval"),
    [("30000000", None, 30.0), ("0", None, None), ("soon", None, None), (None, "self", None)],
)
def test_watchdog_interval(usec, pid, interval):
    environ = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    if usec is not None:
        environ["WATCHDOG_USEC"] = usec
    if pid is not None:
        environ["WATCHDOG_PID"] = str(os.getpid())
    assert Notifier.from_environ(environ).watchdog_interval == interval


def test_unusable_socket_is_logged_not_raised(tmp_path, caplog):
    assert not Notifier(str(tmp_path / "gone")).ready()
    assert not Notifier("notify").ready()  # neither a path nor @name
    assert len(caplog.records) == 2


def test_keep_alive_pings_only_while_the_loop_progresses(listener, caplog):
    sock, path = listener
    notifier = Notifier.from_environ(watched_environ(path))
    grace = 0.3  # several of the main loop's turns, even on a loaded machine

    async def scenario() -> tuple[list[bytes], list[bytes], list[bytes]]:
        loop = asyncio.get_running_loop()
        last_turn = loop.time()
        running = asyncio.Event()
        running.set()

        async def main_loop() -> None:  # what the daemon's loop does: stamp every turn
            nonlocal last_turn
            while True:
                await running.wait()  # cleared: the loop hangs on an await that never ends
                last_turn = loop.time()
                await asyncio.sleep(0.02)

        stop = asyncio.Event()
        main = asyncio.create_task(main_loop())
        pings = asyncio.create_task(
            keep_alive(notifier, lambda: loop.time() - last_turn < grace, stop)
        )
        await asyncio.sleep(0.55)
        healthy = received(sock)
        running.clear()
        await asyncio.sleep(grace + 0.05)  # at most one more ping while within the grace
        received(sock)
        await asyncio.sleep(0.5)
        hung = received(sock)
        running.set()
        await asyncio.sleep(0.45)
        resumed = received(sock)
        stop.set()
        await asyncio.wait_for(pings, 1.0)
        main.cancel()
        return healthy, hung, resumed

    with caplog.at_level(logging.WARNING, logger="poller.sdnotify"):
        healthy, hung, resumed = asyncio.run(scenario())
    assert len(healthy) >= 3 and set(healthy) == {b"WATCHDOG=1"}
    assert hung == []
    assert len(resumed) >= 2 and set(resumed) == {b"WATCHDOG=1"}
    assert [r.levelname for r in caplog.records] == ["ERROR", "WARNING"]  # once each, not a flood


def test_keep_alive_ends_at_the_stop_not_a_period_later(listener):
    _, path = listener
    notifier = Notifier(path, watchdog_interval=20.0)

    async def scenario() -> None:
        stop = asyncio.Event()
        pings = asyncio.create_task(keep_alive(notifier, lambda: True, stop))
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(pings, 1.0)

    asyncio.run(scenario())
