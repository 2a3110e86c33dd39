"""Group sync: joined groups upserted with participants and the read-only rule; groups we left
become inactive."""

import json

from poller.groups import bare, readonly_reason
from poller.transports.base import GroupInfo
from tests.poller_support import Poller, make_team, wait_until

ME = "905550000001@s.whatsapp.net"
ME_LID = "88001234567890@lid"


def member(jid: str, lid: str | None = None, admin: bool = False, superadmin: bool = False):
    return {
        "jid": jid,
        "lid": lid,
        "phone_number": None,
        "is_admin": admin,
        "is_super_admin": superadmin,
    }


def test_bare_strips_the_device_part():
    assert bare("905550000001:12@s.whatsapp.net") == ME
    assert bare("88001234567890:3@lid") == ME_LID
    assert bare("") is None


def test_readonly_rules():
    own = {ME, ME_LID}
    other = member("905559999999@s.whatsapp.net")

    def group(*participants, announce=False):
        return GroupInfo("1@g.us", "g", list(participants), announce)

    assert readonly_reason(group(other), own) == "our account is not a participant"
    assert readonly_reason(group(other, member("x@s.whatsapp.net", ME_LID)), own) is None
    assert readonly_reason(group(member("905550000001:7@s.whatsapp.net")), own) is None
    assert readonly_reason(group(member(ME), announce=True), own) == (
        "only admins may post and our account is not an admin"
    )
    assert readonly_reason(group(member(ME, admin=True), announce=True), own) is None
    assert readonly_reason(group(member(ME, superadmin=True), announce=True), own) is None
    by_phone = {"jid": "x@lid", "lid": None, "phone_number": ME, "is_admin": False}
    assert readonly_reason(group(by_phone), own) is None


def test_sync_on_connect_and_again_after_a_change(conn, db_url, tmp_path):
    team = make_team(conn, groups=1)
    old_jid = next(iter(team.groups))  # the session's group WhatsApp will no longer list
    groups_file = tmp_path / "groups.json"
    joined = [
        {
            "jid": "120363100000000001@g.us",
            "name": "Hasar Takip",
            "participants": [
                member("905550000001:3@s.whatsapp.net"),
                member("905557777777@s.whatsapp.net"),
            ],
        },
        {
            "jid": "120363100000000002@g.us",
            "name": "Kopya",
            "participants": [member("905557777777@s.whatsapp.net")],
        },
        {
            "jid": "120363100000000003@g.us",
            "name": "Duyurular",
            "announce_only": True,
            "participants": [member(ME)],
        },
        {
            "jid": "120363100000000004@g.us",
            "name": "Yöneticiler",
            "announce_only": True,
            "participants": [member(ME, admin=True)],
        },
    ]
    groups_file.write_text(json.dumps(joined))
    poller = Poller(db_url, tmp_path, sim_groups_file=groups_file, group_sync_interval=1)
    poller.start()

    def rows():
        return {
            r[0]: r[1:]
            for r in conn.execute(
                "select jid, name, is_active, is_readonly, readonly_reason, "
                "jsonb_array_length(participants), last_synced is not null from whatsapp_groups"
            )
        }

    try:
        wait_until(lambda: len(rows()) == 5 and not rows()[old_jid][1], 20, "the first sync")
        assert rows() == {
            old_jid: ("Grup 0", False, False, None, 0, True),
            "120363100000000001@g.us": ("Hasar Takip", True, False, None, 2, True),
            "120363100000000002@g.us": (
                "Kopya",
                True,
                True,
                "our account is not a participant",
                1,
                True,
            ),
            "120363100000000003@g.us": (
                "Duyurular",
                True,
                True,
                "only admins may post and our account is not an admin",
                1,
                True,
            ),
            "120363100000000004@g.us": ("Yöneticiler", True, False, None, 1, True),
        }
        session = conn.execute(
            "select session_id from whatsapp_groups where jid = %s", ["120363100000000001@g.us"]
        ).fetchone()[0]
        assert session == team.sessions[0]
        # We are added to Kopya and leave Yöneticiler: the next periodic sync shows it.
        joined[1]["participants"].append(member(ME))
        del joined[3]
        groups_file.write_text(json.dumps(joined))
        wait_until(
            lambda: (
                rows()["120363100000000004@g.us"][1] is False
                and rows()["120363100000000002@g.us"][2] is False
            ),
            20,
            "the periodic sync",
        )
    finally:
        assert poller.terminate() == 0
