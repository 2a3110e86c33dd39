"""postgres_changes, the simple path: status updates of public.messages reach Supabase Realtime
through the `supabase_realtime` publication. Realtime reads logical decoding through wal2json, so
we read the same stream here. Each change carries the whole row, content included, and Realtime
authorizes it once per subscriber: the ticks go through Broadcast instead (test_broadcast.py)."""

import json

from tests.personas import G1, send_as


def test_status_update_appears_in_the_wal2json_stream(conn, data):
    conn.execute("select pg_create_logical_replication_slot('wa_realtime_test', 'wal2json')")
    try:
        row = send_as(conn, "employee", data, G1, "canlı")
        conn.execute(
            "update messages set status = 'sent', sent_at = now() where id = %s", [row["id"]]
        )
        changes = [
            json.loads(r[0])
            for r in conn.execute(
                "select data from pg_logical_slot_get_changes('wa_realtime_test', null, null, "
                "'format-version', '2', 'add-tables', 'public.messages')"
            )
        ]
    finally:
        conn.execute("select pg_drop_replication_slot('wa_realtime_test')")
    dml = [c for c in changes if c["action"] in ("I", "U")]
    assert [c["action"] for c in dml] == ["I", "U"]
    update = {col["name"]: col["value"] for col in dml[1]["columns"]}
    assert update["id"] == str(row["id"])
    assert update["status"] == "sent"
    assert update["sent_at"] is not None
    assert update["content"] == "canlı"
