"""Drain rate of pgmq's read functions and of the poller's own read (private.take_outbound, which
also loads and claims each message's row): a backlog of --messages across --groups groups, read and
archived in batches of --batch, for each function in one run (each on the same backlog, rebuilt
in between). Prints JSON with messages per second (median of --runs) and each one's ordering
guarantee.

Uses $WA_DATABASE_URL's server if set, otherwise an embedded PostgreSQL in .local/bench-pg.
"""

import argparse
import json
import statistics
import time

import psycopg
from benchlib import bench_database

FUNCTIONS = {
    "read_grouped": "SQS-style: fills the batch from the oldest group first; a group is skipped "
    "while an earlier message of it is invisible (FIFO holds)",
    "read_grouped_rr": "round robin across groups, all visible messages from each group's head; "
    "a group is offered only while its oldest message is visible (FIFO holds)",
    "read_grouped_head": "at most one message per group, the head, only if visible (FIFO holds; "
    "a batch never has two messages of one group)",
    "read": "no grouping: a later message can be read while an earlier one of its group is in "
    "flight or waiting for a retry (FIFO does not hold)",
    "take_outbound": "the poller's read: read_grouped_rr's rule from each of its groups' head "
    "(the group index, plans cached), then the claim of the messages read, in one call "
    "(FIFO holds)",
}


SESSION = "00000000-0000-4000-8000-0000000be5e5"
_JID = "'1203630000' || lpad((i %% %s)::text, 8, '0') || '@g.us'"


def prepare(conn: psycopg.Connection, groups: int) -> None:
    """One connected session held by the bench's poller id, and its groups: take_outbound
    reads only the groups of the sessions its caller holds and has connected."""
    conn.execute(
        "insert into whatsapp_sessions (id, status, lease_owner, lease_expires_at) "
        "values (%s, 'connected', 'bench', now() + interval '1 day')",
        [SESSION],
    )
    conn.execute(
        f"insert into whatsapp_groups (jid, name, session_id) "
        f"select {_JID}, 'G' || i, %s from generate_series(0, %s - 1) i",
        [groups, SESSION, groups],
    )


def fill(conn: psycopg.Connection, messages: int, groups: int) -> None:
    """The backlog: messages rows (take_outbound claims them) and their queue rows."""
    conn.execute("delete from pgmq.q_whatsapp_outbound")
    conn.execute("delete from messages")
    conn.execute(
        "with m as ("
        f"  insert into messages (group_jid, content) select {_JID}, 'm' || i "
        "  from generate_series(1, %s) i returning id, group_jid) "
        "insert into pgmq.q_whatsapp_outbound (vt, message, headers) "
        "select clock_timestamp(), jsonb_build_object('message_id', m.id), "
        "jsonb_build_object('x-pgmq-group', m.group_jid) from m",
        [groups, messages],
    )
    conn.execute("vacuum analyze pgmq.q_whatsapp_outbound")
    conn.execute("vacuum analyze messages")


def read_sql(function: str) -> str:
    if function == "take_outbound":  # as the poller holding the session, with room for all
        return (
            f"select msg_id from private.take_outbound('bench', '{{{SESSION}}}', '{{1000000}}', "
            "'{}', 30, %s, 86400)"
        )
    return f"select msg_id from pgmq.{function}('whatsapp_outbound', 30, %s)"


def drain(conn: psycopg.Connection, function: str, batch: int) -> float:
    started = time.perf_counter()
    total = 0
    while True:
        ids = [r[0] for r in conn.execute(read_sql(function), [batch])]
        if not ids:
            break
        conn.execute("select pgmq.archive('whatsapp_outbound', %s::bigint[])", [ids])
        total += len(ids)
    return total / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    rates: dict[str, list[float]] = {f: [] for f in FUNCTIONS}
    with (
        bench_database("wa_reads") as database,
        psycopg.connect(database.url, autocommit=True) as conn,
    ):
        prepare(conn, args.groups)
        for _ in range(args.runs):
            for function in FUNCTIONS:  # the same backlog for each, in one run
                fill(conn, args.messages, args.groups)
                rates[function].append(drain(conn, function, args.batch))
    print(
        json.dumps(
            {
                "benchmark": "read + archive, backlog drain",
                "messages": args.messages,
                "groups": args.groups,
                "batch": args.batch,
                "messages_per_s": {f: round(statistics.median(r)) for f, r in rates.items()},
                "ordering": FUNCTIONS,
                "chosen": "take_outbound",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
