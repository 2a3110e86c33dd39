"""pgmq in the version under test: 1.13 (the SQL-only install the `pgmq` package ships) or the
1.5.1 surface hosted Supabase ships, derived from that 1.13 install.

No package ships pgmq 1.5.1's SQL, so `derive_1_5_1` edits the 1.13 install text: the
`last_read_at` column (added after 1.5.1) goes from every table pgmq.create makes, from the
`message_record` type and from every statement that reads or writes it; `pop` loses its `qty`
parameter; and the functions and tables 1.5.1 lacks are dropped after the install. The lists
below come from pgmq's upgrade scripts (pgmq--1.5.1--1.6.0.sql up to 1.13) and a catalog diff
of a 1.5.1 install against the 1.13 one.

Known differences left in place, because removing them means rewriting pgmq's code rather than
deleting it: `create_partitioned` keeps 1.13's optional `premake` argument (it needs
pg_partman, which no test server has); the `metrics_result` type keeps 1.13's extra
`default_partition_length` field; and the internal helpers that kept functions call
(`acquire_queue_lock`, `_send_batch`, `_validate_batch_params`, and `_set_vt_at`, the
renamed absolute-time set_vt) stay.
"""

import os
import re

import psycopg
from pgmq.install import get_embedded_install_sql, get_embedded_sql_version

VERSIONS = ("1.5.1", "1.13")
# What hosted Supabase ships today.
DEFAULT_VERSION = "1.5.1"
ENV = "WA_TEST_PGMQ"

# Functions in 1.13 that 1.5.1 does not have (identity argument types). Two are not here because
# their text is edited instead: pop(text, integer) goes back to 1.5.1's pop(text), and
# set_vt(text, bigint, timestamptz), which 1.13's set_vt(text, bigint, integer) calls, becomes
# the internal pgmq._set_vt_at.
FUNCTIONS_1_5_1_LACKS = (
    # 1.7: insert notifications; 1.9+: their throttle
    "notify_queue_listeners()",
    "enable_notify_insert(text, integer)",
    "disable_notify_insert(text)",
    "update_notify_insert(text, integer)",
    "list_notify_insert_throttles()",
    # 1.8+: set_vt for several messages and to an absolute time
    "set_vt(text, bigint[], integer)",
    "set_vt(text, bigint[], timestamp with time zone)",
    # 1.9+: FIFO (grouped) reads and their index helpers
    "read_grouped(text, integer, integer)",
    "read_grouped_with_poll(text, integer, integer, integer, integer)",
    "read_grouped_head(text, integer, integer)",
    "read_grouped_head_with_poll(text, integer, integer, integer, integer)",
    "read_grouped_rr(text, integer, integer)",
    "read_grouped_rr_with_poll(text, integer, integer, integer, integer)",
    "create_fifo_index(text)",
    "create_fifo_indexes_all()",
    "_create_fifo_index_if_not_exists(text)",
    # 1.11+: topic routing
    "bind_topic(text, text)",
    "unbind_topic(text, text)",
    "list_topic_bindings()",
    "list_topic_bindings(text)",
    "test_routing(text)",
    "validate_routing_key(text)",
    "validate_topic_pattern(text)",
    "send_topic(text, jsonb)",
    "send_topic(text, jsonb, integer)",
    "send_topic(text, jsonb, jsonb, integer)",
    "send_batch_topic(text, jsonb[])",
    "send_batch_topic(text, jsonb[], integer)",
    "send_batch_topic(text, jsonb[], timestamp with time zone)",
    "send_batch_topic(text, jsonb[], jsonb[])",
    "send_batch_topic(text, jsonb[], jsonb[], integer)",
    "send_batch_topic(text, jsonb[], jsonb[], timestamp with time zone)",
)
TABLES_1_5_1_LACKS = ("notify_insert_throttle", "topic_bindings")


def selected_version() -> str:
    """The pgmq version the suite runs on (WA_TEST_PGMQ, default 1.5.1)."""
    version = os.environ.get(ENV, DEFAULT_VERSION)
    if version not in VERSIONS:
        raise ValueError(f"{ENV}={version!r}: expected one of {', '.join(VERSIONS)}")
    return version


def install_sql(version: str) -> str:
    """The SQL that installs pgmq `version` into a database without it."""
    shipped = get_embedded_install_sql()
    if not get_embedded_sql_version().startswith("1.13"):
        # The derivation below is checked against 1.13's text; a newer one needs a new look.
        raise RuntimeError(f"pgmq package ships {get_embedded_sql_version()}, expected 1.13")
    if version == "1.13":
        return shipped
    if version == "1.5.1":
        return derive_1_5_1(shipped)
    raise ValueError(f"unsupported pgmq version {version!r}")


def derive_1_5_1(text: str) -> str:
    # Column definitions in the message_record type and in pgmq.create's CREATE TABLEs.
    text = re.sub(r"(?im)^[ \t]*last_read_at TIMESTAMP WITH TIME ZONE,[ \t]*\n", "", text)
    # Assignments in the reads' UPDATE ... SET lists.
    text = re.sub(r"(?i)last_read_at = clock_timestamp\(\),\s*", "", text)
    text = re.sub(r"(?i),\s*last_read_at = clock_timestamp\(\)", "", text)
    # Column lists in RETURNING, SELECT and INSERT.
    text = re.sub(r"(?i)\b(?:m\.)?last_read_at,\s*", "", text)
    if "last_read_at" in text:
        raise RuntimeError("pgmq 1.13 install: a last_read_at use the derivation does not know")
    text = _pop_without_qty(text)
    text = _replace_once(
        text,
        "CREATE FUNCTION pgmq.set_vt(queue_name TEXT, msg_id BIGINT, vt TIMESTAMP",
        "CREATE FUNCTION pgmq._set_vt_at(queue_name TEXT, msg_id BIGINT, vt TIMESTAMP",
    )
    text = _replace_once(
        text,
        "SELECT * FROM pgmq.set_vt(queue_name, msg_id, clock_timestamp()",
        "SELECT * FROM pgmq._set_vt_at(queue_name, msg_id, clock_timestamp()",
    )
    drops = [f"drop function pgmq.{signature};" for signature in FUNCTIONS_1_5_1_LACKS]
    drops += [f"drop table pgmq.{table} cascade;" for table in TABLES_1_5_1_LACKS]
    return text + "\n-- pgmq 1.5.1 surface: what 1.5.1 lacks goes.\n" + "\n".join(drops) + "\n"


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise RuntimeError(f"pgmq 1.13 install: expected {old!r} exactly once")
    return text.replace(old, new)


def _pop_without_qty(text: str) -> str:
    head = "CREATE FUNCTION pgmq.pop(queue_name TEXT, qty INTEGER DEFAULT 1)"
    start = text.find(head)
    end = text.find("$$ LANGUAGE plpgsql;", start)
    if start < 0 or end < 0 or text.count("USING qty;", start, end) != 1:
        raise RuntimeError("pgmq 1.13 install: pop() is not where the derivation expects it")
    body = text[start:end]
    body = body.replace(head, "CREATE FUNCTION pgmq.pop(queue_name TEXT)")
    body = body.replace("USING qty;", "USING 1;")
    return text[:start] + body + text[end:]


def install(conn: psycopg.Connection, version: str) -> None:
    """Install pgmq `version` as the connected superuser, then hand it to `postgres`, as
    Supabase's after-create script for pgmq does (and the pgmq schema too, which Supabase
    projects show owned by `postgres`), so migrations run as `postgres` can create queues."""
    with conn.transaction():
        conn.execute(install_sql(version).encode())
        conn.execute(_HAND_TO_POSTGRES)


_HAND_TO_POSTGRES = """
do $$
declare
  r record;
begin
  alter schema pgmq owner to postgres;
  for r in select c.oid::regclass as name from pg_class c
           where c.relnamespace = 'pgmq'::regnamespace and c.relkind in ('r', 'p', 'v', 'm')
  loop
    execute format('alter table %s owner to postgres', r.name);
  end loop;
  for r in select t.oid::regtype as name from pg_type t
           left join pg_class c on c.oid = t.typrelid
           where t.typnamespace = 'pgmq'::regnamespace and t.typelem = 0
             and (c.oid is null or c.relkind = 'c')
  loop
    execute format('alter type %s owner to postgres', r.name);
  end loop;
  for r in select p.oid::regprocedure as name from pg_proc p
           where p.pronamespace = 'pgmq'::regnamespace
  loop
    execute format('alter routine %s owner to postgres', r.name);
  end loop;
end
$$;
"""


def surface(conn: psycopg.Connection) -> tuple[set[str], dict[str, list[str]]]:
    """pgmq's functions (name(identity args)) and each table's columns, for the tests."""
    functions = {
        row[0]
        for row in conn.execute(
            "select p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')' "
            "from pg_proc p where p.pronamespace = 'pgmq'::regnamespace"
        )
    }
    columns: dict[str, list[str]] = {}
    for table, column in conn.execute(
        "select c.relname, a.attname from pg_class c join pg_attribute a on a.attrelid = c.oid "
        "where c.relnamespace = 'pgmq'::regnamespace and c.relkind in ('r', 'p', 'c') "
        "and a.attnum > 0 and not a.attisdropped order by c.relname, a.attnum"
    ):
        columns.setdefault(table, []).append(column)
    return functions, columns
