"""Several pollers share the sessions through leases: the sessions are split between them, and
when one is SIGKILLed the other takes its sessions over within the lease TTL and sends their
queued messages, none lost, group order kept."""

import time
from collections import Counter

from tests.poller_support import (
    Poller,
    enqueue,
    first_send_order,
    make_team,
    queue_order,
    status_counts,
    wait_until,
)

LEASE_TTL = 2.0
PER_GROUP = 100
TOTAL = 8 * PER_GROUP


def owners(conn) -> Counter:
    return Counter(
        r[0]
        for r in conn.execute(
            "select lease_owner from whatsapp_sessions where lease_expires_at > now()"
        )
    )


def test_two_pollers_split_the_sessions_and_survive_a_kill(conn, db_url, tmp_path):
    team = make_team(conn, groups=8, sessions=4)
    a = Poller(
        db_url, tmp_path / "a", poller_id="poller-a", sim_latency_ms=50, visibility_timeout=2
    )
    b = Poller(
        db_url, tmp_path / "b", poller_id="poller-b", sim_latency_ms=50, visibility_timeout=2
    )
    a.start()
    try:
        wait_until(lambda: owners(conn) == {"poller-a": 4}, 20, "poller A to hold every session")
        b.start()
        wait_until(
            lambda: owners(conn) == {"poller-a": 2, "poller-b": 2},
            20,
            f"an even split\n{a.output()[-2000:]}\n{b.output()[-2000:]}",
        )
        enqueue(conn, list(team.groups), per_group=PER_GROUP)
        wait_until(lambda: len(a.sends()) >= 10, 30, "poller A to send")
        a.kill()
        assert len(a.sends()) < 4 * PER_GROUP, "poller A finished before the kill"
        killed_at = time.monotonic()
        wait_until(lambda: owners(conn) == {"poller-b": 4}, 10, "poller B to take over")
        takeover = time.monotonic() - killed_at
        assert takeover <= LEASE_TTL + 2.0, takeover
        wait_until(
            lambda: (
                sum(v for k, v in status_counts(conn).items() if k in ("sent", "delivered"))
                == TOTAL
            ),
            60,
            f"all messages\n{b.output()[-3000:]}",
        )
    finally:
        a.stop_quietly()
        assert b.terminate() == 0
    sends = sorted(a.sends() + b.sends(), key=lambda e: e["t"])
    assert len({s["message_id"] for s in sends}) == TOTAL
    assert first_send_order(sends) == queue_order(conn)
    per_poller = {
        name: Counter(e["session"][:8] for e in p.sends()) for name, p in (("a", a), ("b", b))
    }
    assert {s["session"] for s in b.sends()} == {str(s) for s in team.sessions}, per_poller
    print(
        f"\ntakeover after SIGKILL: {takeover:.2f} s (lease TTL {LEASE_TTL} s); "
        f"{len(sends) - TOTAL} duplicate send(s)"
    )
