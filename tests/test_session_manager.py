"""The session manager as the transports' event sink: QR codes, pairing, connection states,
logout and pairing again, and letting go of a session, as they land in whatsapp_sessions."""

import asyncio

from poller.db import Database
from poller.receipts import Receipts
from poller.sessions import SessionManager
from poller.settings import Settings
from poller.transports.base import ConnectionState
from poller.transports.simulated import SimulatedTransport
from tests.conftest import poller_url


def test_session_life_in_the_table(conn, db_url, tmp_path):
    (tmp_path / "disconnected").touch()  # the simulated client stays offline: events are ours
    sid = conn.execute(
        "insert into whatsapp_sessions (phone_number) values (null) returning id"
    ).fetchone()[0]

    def row() -> tuple:
        return conn.execute(
            "select status::text, status_reason, qr_code, wa_jid, wa_lid, phone_number, "
            "paired_at is not null, lease_owner from whatsapp_sessions where id = %s",
            [sid],
        ).fetchone()

    async def scenario() -> dict[str, object]:
        settings = Settings(
            database_url=poller_url(db_url), poller_id="manager-test", sim_control_dir=tmp_path
        )
        db = Database(settings.database_url)
        await db.open()
        manager = SessionManager(db, SimulatedTransport(settings), Receipts(db), settings)
        writer = asyncio.create_task(manager._write_in_order())

        async def settle() -> None:
            while not manager._writes.empty():
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)

        seen: dict[str, object] = {}
        await manager.heartbeat()
        seen["held"] = list(manager.clients)
        manager.qr_code(sid, "2@first,abc")
        manager.qr_code(sid, "2@second,abc")
        await settle()
        seen["scanning"] = row()
        manager.paired(sid, "905551112233@s.whatsapp.net", "88001234567890@lid")
        manager.connection_changed(sid, ConnectionState.CONNECTED, None)
        await settle()
        seen["connected"] = row()
        first_client = manager.clients[sid]
        await manager.heartbeat()  # a paired, running session is not restarted by a heartbeat
        seen["kept_running"] = manager.clients[sid] is first_client
        manager.logged_out(sid, "logged out: LOGGED_OUT")
        manager.connection_changed(sid, ConnectionState.DISCONNECTED, "logged out: LOGGED_OUT")
        await settle()
        seen["logged_out"] = row()
        conn.execute("update whatsapp_sessions set pair_requested_at = now() where id = %s", [sid])
        await manager.heartbeat()
        seen["restarted_for_pairing"] = manager.clients[sid] is not first_client
        second_client = manager.clients[sid]
        manager.let_go(sid, "stream replaced")
        await asyncio.sleep(0.2)
        await manager.heartbeat()  # no pairing asked since: the session stays let go
        seen["after_let_go"] = (
            manager.clients[sid] is second_client,
            second_client.connected,
            row()[7],
        )
        await asyncio.sleep(0.01)
        conn.execute("update whatsapp_sessions set pair_requested_at = now() where id = %s", [sid])
        await manager.heartbeat()
        seen["repaired_after_let_go"] = manager.clients[sid] is not second_client
        writer.cancel()
        await manager.stop()
        await db.close()
        return seen

    seen = asyncio.run(scenario())
    assert seen["held"] == [sid]
    assert seen["scanning"] == (
        "scanning",
        "waiting for the phone to scan the QR code",
        "2@second,abc",
        None,
        None,
        None,
        False,
        "manager-test",
    )
    assert seen["connected"] == (
        "connected",
        None,
        None,
        "905551112233@s.whatsapp.net",
        "88001234567890@lid",
        "905551112233",
        True,
        "manager-test",
    )
    assert seen["logged_out"] == (
        "disconnected",
        "logged out: LOGGED_OUT",
        None,
        None,
        None,
        "905551112233",
        False,
        "manager-test",
    )
    assert seen["restarted_for_pairing"] is True
    assert seen["kept_running"] is True
    assert seen["after_let_go"] == (True, False, "manager-test")  # stopped, lease kept
    assert seen["repaired_after_let_go"] is True
