"""What the people who run the poller watch, on a real `wa-poller run`: its Prometheus metrics
and health check over HTTP (WA_METRICS_ADDR), and systemd's notifications and watchdog pings on
a socket the test listens on, as systemd would."""

import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from poller.localpg import free_port
from tests.conftest import start_and_wait
from tests.poller_support import Poller, enqueue, make_team, status_counts, wait_until


def scrape(port: int) -> dict[str, float]:
    """Each sample's name and labels, summed over the labels not given: name{a="x"} → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name] = samples.get(sample.name, 0.0) + sample.value
            for label, value in sample.labels.items():
                key = f'{sample.name}{{{label}="{value}"}}'
                samples[key] = samples.get(key, 0.0) + sample.value
    return samples


def health(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except urllib.error.URLError as error:  # not listening yet
        return 0, str(error)


def sent(conn: psycopg.Connection) -> int:
    return sum(v for k, v in status_counts(conn).items() if k in ("sent", "delivered", "read"))


def test_a_running_poller_counts_its_sends_and_answers_healthy(conn, db_url, tmp_path):
    team = make_team(conn, groups=3)
    port = free_port()
    # Transient failures, retried: with 20 attempts none of the 30 fails for good (0.3^20).
    poller = Poller(
        db_url, tmp_path, metrics_addr=f"127.0.0.1:{port}", sim_failure_rate=0.3, max_attempts=20
    )
    poller.start()
    try:
        wait_until(lambda: health(port)[0] == 200, 20, f"a healthy poller\n{poller.output()}")
        enqueue(conn, list(team.groups), per_group=10)
        wait_until(lambda: sent(conn) == 30, 30, "30 messages to be sent")
        wait_until(
            lambda: scrape(port).get("wa_messages_sent_total", 0) == 30, 5, "30 sends counted"
        )
        samples = scrape(port)
    finally:
        assert poller.terminate() == 0, poller.output()[-3000:]
    retried = conn.execute("select coalesce(sum(attempts - 1), 0) from messages").fetchone()[0]
    assert retried > 0  # the simulated failures were retried, each counted
    assert samples["wa_send_retries_total"] == retried
    assert samples.get("wa_messages_failed_total", 0) == 0
    assert samples["wa_send_latency_seconds_count"] == 30
    session = str(team.sessions[0])
    assert samples[f'wa_messages_sent_total{{session="{session}"}}'] == 30
    assert samples['wa_session_state{state="connected"}'] == 1


def test_health_turns_503_while_the_database_is_down_and_200_after(own_server, tmp_path):
    server, url = own_server
    with psycopg.connect(url, autocommit=True) as conn:
        make_team(conn, groups=1)
    port = free_port()
    poller = Poller(url, tmp_path, metrics_addr=f"127.0.0.1:{port}").start()
    try:
        wait_until(lambda: health(port)[0] == 200, 20, f"a healthy poller\n{poller.output()}")
        server.stop()
        wait_until(lambda: health(port)[0] == 503, 15, "503 while the database is down")
        assert health(port)[1].startswith("database:"), health(port)
        start_and_wait(server)
        wait_until(lambda: health(port)[0] == 200, 30, f"200 again\n{poller.output()[-2000:]}")
    finally:
        assert poller.terminate() == 0, poller.output()[-3000:]


def listen_as_systemd(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    return sock


def received(sock: socket.socket, into: list[str]) -> list[str]:
    try:
        while True:
            into.append(sock.recv(4096).decode())
    except TimeoutError:
        return into


def test_systemd_hears_ready_then_watchdog_pings_then_stopping(conn, db_url, tmp_path):
    make_team(conn, groups=1)
    path = tmp_path / "notify"
    sock = listen_as_systemd(path)
    poller = Poller(db_url, tmp_path)
    # WatchdogSec=2s: a ping every second while the loop turns.
    poller.env |= {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"}
    poller.start()
    heard: list[str] = []
    try:
        wait_until(
            lambda: received(sock, heard).count("WATCHDOG=1") >= 3, 20, f"pings, heard {heard}"
        )
    finally:
        assert poller.terminate() == 0, poller.output()[-3000:]
    time.sleep(0.5)
    received(sock, heard)
    sock.close()
    assert heard[0] == "READY=1", heard
    assert heard.index("READY=1") < heard.index("WATCHDOG=1")
    assert "STOPPING=1" in heard and "WATCHDOG=1" not in heard[heard.index("STOPPING=1") :]
