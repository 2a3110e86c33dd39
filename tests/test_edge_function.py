"""The send-message Edge Function (supabase/functions/send-message) under Deno: a user's JWT in,
send_message run as that user, PostgREST's statuses and error bodies out. One Deno server for
the module, on a database as Supabase gives it (SUPABASE_DB_URL as `postgres`), called with plain
HTTP and with the `supabase` package's functions.invoke."""

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from supabase_functions.errors import FunctionsHttpError

from poller.localpg import free_port
from supabase import create_client
from tests.conftest import cloned_database, postgres_url, server_url
from tests.personas import (
    G1,
    G2,
    G_INACTIVE,
    G_READONLY,
    G_UNASSIGNED,
    Seed,
    acting_as,
    seed,
)

ROOT = Path(__file__).resolve().parent.parent
FUNCTION_DIR = ROOT / "supabase" / "functions" / "send-message"
DENO = ROOT / "tools" / "node_modules" / ".bin" / "deno"
BENCH = ROOT / "bench" / "edge_function.py"
SECRET = secrets.token_urlsafe(32)
UNKNOWN = "120363999999999999@g.us"
PATH = "/functions/v1/send-message"


@dataclass
class Edge:
    url: str  # the server's root; the function is at PATH
    conn: psycopg.Connection  # superuser, on the database the function writes to
    data: Seed
    es256_key: ec.EllipticCurvePrivateKey  # its public half is the function's SUPABASE_JWKS


@dataclass
class Answer:
    status: int
    body: object
    headers: dict[str, str]


def token(claims: dict | None, *, expires_in: int = 600, key: object = SECRET, **headers) -> str:
    algorithm = "HS256" if isinstance(key, str) else "ES256"
    payload = {**(claims or {}), "exp": int(time.time()) + expires_in}
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers or None)


@contextmanager
def running_function(db_url: str, **env: str) -> Iterator[str]:
    """The function under `deno run` on a free port, until the block ends; yields its root URL.
    Its output goes to a file (a pipe nobody reads could fill and stop it)."""
    port = free_port()
    settings = {
        **os.environ,
        "SUPABASE_DB_URL": db_url,
        "SUPABASE_JWT_SECRET": SECRET,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "NO_COLOR": "1",
        **env,
    }
    command = [str(DENO), "run", "--frozen", "--allow-net", "--allow-env", "index.ts"]
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen(
            command, cwd=FUNCTION_DIR, env=settings, stdout=log, stderr=subprocess.STDOUT
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_serving(base, server, log)
            yield base
        finally:
            server.terminate()
            server.wait(timeout=10)


def wait_until_serving(base: str, server: subprocess.Popen, log: IO[str]) -> None:
    """Deno fetches the npm packages of deno.lock if its cache lacks them: allow for that."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"deno exited: {log.read()}")
        try:
            urllib.request.urlopen(base + PATH, timeout=1)
        except urllib.error.HTTPError:
            return  # a GET answers 405: it is up
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the function did not start")


@pytest.fixture(scope="module")
def edge(pg_server, template_url) -> Iterator[Edge]:
    """One database and one function for the module: SUPABASE_DB_URL as `postgres`, as hosted
    Supabase gives it; both an HS256 secret and a JWKS with one ES256 key."""
    es256_key = ec.generate_private_key(ec.SECP256R1())
    public_jwk = {
        **json.loads(jwt.algorithms.ECAlgorithm.to_jwk(es256_key.public_key())),
        "kid": "test-key",
        "alg": "ES256",
    }
    jwks = json.dumps({"keys": [public_jwk]})
    with cloned_database(pg_server) as url, psycopg.connect(url, autocommit=True) as conn:
        data = seed(conn)
        with running_function(postgres_url(url), SUPABASE_JWKS=jwks) as base:
            yield Edge(base, conn, data, es256_key)


def call(
    edge: Edge,
    body: object,
    bearer: str | None,
    *,
    method: str = "POST",
    path: str = PATH,
    raw: bytes | None = None,
) -> Answer:
    headers = {"Content-Type": "application/json"}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(
        edge.url + path, data=None if method == "GET" else data, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Answer(response.status, json.loads(response.read()), lower(response.headers))
    except urllib.error.HTTPError as error:
        return Answer(error.code, json.loads(error.read()), lower(error.headers))


def lower(headers: object) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def user_token(edge: Edge, persona: str) -> str:
    return token(edge.data.claims(persona))


def postgrest_body(edge: Edge, persona: str, query: str, params: list) -> dict:
    """The error body PostgREST gives for this call: the same call in SQL as the persona."""
    with pytest.raises(psycopg.Error) as raised, acting_as(edge.conn, persona, edge.data):
        edge.conn.execute(query, params)
    diag = raised.value.diag
    return {
        "code": diag.sqlstate,
        "message": diag.message_primary,
        "details": diag.message_detail,
        "hint": diag.message_hint,
    }


def message_count(edge: Edge) -> int:
    return edge.conn.execute("select count(*) from messages").fetchone()[0]


def test_sends_as_the_user_of_the_jwt(edge: Edge) -> None:
    answer = call(
        edge, {"group_jid": G1, "content": "Poliçeniz yenilendi. 📄"}, user_token(edge, "employee")
    )
    assert answer.status == 202
    row = answer.body
    assert row["group_jid"] == G1
    assert row["status"] == "pending"
    assert row["content"] == "Poliçeniz yenilendi. 📄"
    assert row["sender_id"] == str(edge.data.employee)
    stored = edge.conn.execute(
        "select sender_id, sender_email, created_at from messages where id = %s", [row["id"]]
    ).fetchone()
    assert stored[:2] == (edge.data.employee, "employee@agency.test")
    # PostgreSQL's JSON of the row, as PostgREST answers it (microseconds, UTC offset).
    assert datetime.fromisoformat(row["created_at"]) == stored[2]
    queued = edge.conn.execute(
        "select headers from pgmq.q_whatsapp_outbound where message->>'message_id' = %s",
        [row["id"]],
    ).fetchall()
    assert queued == [({"x-pgmq-group": G1},)]


# supabase-py's own create_client passes its functions client a deprecated argument.
@pytest.mark.filterwarnings("ignore:The 'timeout' parameter is deprecated:DeprecationWarning")
def test_functions_invoke_of_the_supabase_client(edge: Edge) -> None:
    """supabase-py posts to <url>/functions/v1/send-message, as to a hosted project."""
    client = create_client(edge.url, token({"role": "anon"}))
    headers = {"Authorization": f"Bearer {user_token(edge, 'employee')}"}
    body = {"group_jid": G1, "content": "invoke", "client_msg_id": str(uuid.uuid4())}
    row = client.functions.invoke(
        "send-message", {"body": body, "headers": headers, "responseType": "json"}
    )
    assert (row["group_jid"], row["client_msg_id"]) == (G1, body["client_msg_id"])
    assert row["sender_id"] == str(edge.data.employee)
    with pytest.raises(FunctionsHttpError) as refused:
        client.functions.invoke(
            "send-message",
            {"body": {"group_jid": G_UNASSIGNED, "content": "x"}, "headers": headers},
        )
    # supabase-py keeps the status only (its message comes from an "error" field, which
    # PostgREST's body has not); the bodies are checked over plain HTTP below.
    assert refused.value.status == 403
    # Without a user's JWT the client sends its key, here the anon one: refused as PostgREST does.
    with pytest.raises(FunctionsHttpError) as anonymous:
        client.functions.invoke("send-message", {"body": {"group_jid": G1, "content": "x"}})
    assert anonymous.value.status == 401


def test_client_msg_id_makes_retries_and_races_safe(edge: Edge) -> None:
    bearer = user_token(edge, "other_employee")
    body = {"group_jid": G2, "content": "tekrar", "client_msg_id": str(uuid.uuid4())}
    before = message_count(edge)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: call(edge, body, bearer), range(16)))
    assert {a.status for a in answers} == {202}
    assert len({a.body["id"] for a in answers}) == 1
    assert message_count(edge) == before + 1
    reused = call(edge, {**body, "content": "başka"}, bearer)
    assert reused.status == 422
    assert reused.body["code"] == "PT422"


@pytest.mark.parametrize(
    ("persona", "group_jid", "content", "status"),
    [
        ("employee", G_UNASSIGNED, "x", 403),  # PT403: RLS-like check, as the user
        ("employee", G2, "x", 403),  # another team's group
        ("admin", UNKNOWN, "x", 404),  # PT404
        ("employee", G_READONLY, "x", 409),  # PT409
        ("employee", G_INACTIVE, "x", 410),  # PT410
        ("employee", "not-a-jid", "x", 400),  # 22023
        ("employee", "1" * 65 + "@g.us", "x", 400),  # 22001
        ("employee", G1, " \u200b ", 400),  # 22004
        ("employee", G1, None, 400),  # 22004
        ("service_role", G1, "x", 403),  # 42501 with a JWT: no user
        ("anon", G1, "x", 401),  # 42501 as anon: no execute on the function
    ],
)
def test_refusals_have_postgrests_status_and_body(
    edge: Edge, persona: str, group_jid: str, content: str | None, status: int
) -> None:
    before = message_count(edge)
    answer = call(edge, {"group_jid": group_jid, "content": content}, user_token(edge, persona))
    assert answer.status == status
    expected = postgrest_body(edge, persona, "select send_message(%s, %s)", [group_jid, content])
    assert answer.body == expected
    assert message_count(edge) == before


def test_optional_parameters_go_by_name(edge: Edge) -> None:
    bearer = user_token(edge, "employee")
    send_at = datetime.now(UTC) + timedelta(hours=1)
    body = {"group_jid": G1, "content": "hatırlatma", "send_at": send_at.isoformat()}
    answer = call(edge, {**body, "mentions": ["everyone"]}, bearer)
    assert answer.status == 202
    assert answer.body["status"] == "scheduled"
    assert datetime.fromisoformat(answer.body["send_at"]) == send_at
    assert answer.body["mentions"] == {"everyone": True}
    # PTxyz is status xyz whatever xyz is: a reply to a message not sent yet is 425.
    not_sent = call(edge, {"group_jid": G1, "content": "re", "reply_to": str(edge.data.m1)}, bearer)
    assert (not_sent.status, not_sent.body["code"]) == (425, "PT425")
    past = call(edge, {**body, "send_at": "2020-01-01T00:00:00Z"}, bearer)
    assert (past.status, past.body["code"]) == (422, "PT422")
    garbled = call(edge, {**body, "send_at": "tomorrow-ish"}, bearer)
    assert (garbled.status, garbled.body["code"]) == (400, "22007")


def test_fan_out_sends_one_row_per_group(edge: Edge) -> None:
    bearer = user_token(edge, "admin")
    groups = [G2, G1, G_UNASSIGNED]
    body = {"group_jids": groups, "content": "duyuru", "client_msg_id": str(uuid.uuid4())}
    answer = call(edge, body, bearer)
    assert answer.status == 202
    rows = answer.body
    assert [r["group_jid"] for r in rows] == groups
    assert {r["sender_id"] for r in rows} == {str(edge.data.admin)}
    assert len({r["batch_id"] for r in rows}) == 1 and rows[0]["batch_id"] is not None
    again = call(edge, body, bearer)
    assert (again.status, [r["id"] for r in again.body]) == (202, [r["id"] for r in rows])


def test_fan_out_is_all_or_nothing(edge: Edge) -> None:
    before = message_count(edge)
    answer = call(edge, {"group_jids": [G1, G2], "content": "x"}, user_token(edge, "employee"))
    assert answer.status == 424
    query = "select send_to_groups(%s, %s)"
    assert answer.body == postgrest_body(edge, "employee", query, [[G1, G2], "x"])
    assert [g["group_jid"] for g in json.loads(answer.body["details"])] == [G2]
    assert message_count(edge) == before
    # send_to_groups has no reply_to: refused before the database.
    reply = call(edge, {"group_jids": [G1], "content": "x", "reply_to": str(edge.data.m1)}, None)
    assert reply.status == 401
    reply = call(
        edge,
        {"group_jids": [G1], "content": "x", "reply_to": str(edge.data.m1)},
        user_token(edge, "employee"),
    )
    assert (reply.status, reply.body["message"]) == (400, "Unknown field: reply_to")


def test_any_text_arrives_exactly(edge: Edge) -> None:
    """The body reaches PostgreSQL as a quoted literal: quotes, backslashes and the like are
    text, never SQL."""
    bearer = user_token(edge, "employee")
    content = "O'Brien \\ \\' '' $$ E'x' \"q\" \\u0041 😀\n'); delete from messages; --"
    answer = call(edge, {"group_jid": G1, "content": content}, bearer)
    assert answer.status == 202
    stored = edge.conn.execute("select content from messages where id = %s", [answer.body["id"]])
    assert stored.fetchone()[0] == content
    nul = call(edge, {"group_jid": G1, "content": "a\u0000b"}, bearer)
    assert (nul.status, nul.body["code"]) == (400, "22P05")


def test_a_bad_uuid_is_postgresqls_error(edge: Edge) -> None:
    body = {"group_jid": G1, "content": "x", "client_msg_id": "not-a-uuid"}
    answer = call(edge, body, user_token(edge, "employee"))
    assert answer.status == 400
    assert answer.body["code"] == "22P02"
    assert "uuid" in answer.body["message"]


def test_the_sender_quota_is_429_with_its_hint(edge: Edge) -> None:
    bearer = user_token(edge, "impostor")  # the one persona no other test sends as
    edge.conn.execute("update send_limits set sender_per_minute = 1")
    try:
        assert call(edge, {"group_jid": G1, "content": "bir"}, bearer).status == 202
        answer = call(edge, {"group_jid": G1, "content": "iki"}, bearer)
    finally:
        edge.conn.execute("update send_limits set sender_per_minute = default")
    assert answer.status == 429
    assert answer.body["code"] == "PT429"
    assert answer.body["message"] == "too many messages: at most 1 a minute per sender"
    assert answer.body["hint"].startswith("Retry in ")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "Empty or invalid json"),
        (b"", "Empty or invalid json"),
        (b'["x"]', "The body must be a JSON object"),
        (b'{"content": "x"}', "Give either group_jid or group_jids"),
        (
            b'{"group_jid": "%s", "group_jids": []}' % G1.encode(),
            "Give either group_jid or group_jids",
        ),
        (
            b'{"group_jid": "%s", "content": "x", "sender_id": "me"}' % G1.encode(),
            "Unknown field: sender_id",
        ),
    ],
)
def test_a_bad_body_is_400(edge: Edge, raw: bytes, message: str) -> None:
    before = message_count(edge)
    answer = call(edge, None, user_token(edge, "employee"), raw=raw)
    assert (answer.status, answer.body["code"], answer.body["message"]) == (
        400,
        "PGRST102",
        message,
    )
    assert message_count(edge) == before


def test_bad_tokens_are_401(edge: Edge) -> None:
    claims = edge.data.claims("employee")
    body = {"group_jid": G1, "content": "x"}
    other_secret = token(claims, key=secrets.token_urlsafe(32))
    # An employee's signature on claims that make them an admin.
    header, _, signature = token(claims).split(".")
    admin_payload = token({**claims, "app_metadata": {"role": "admin"}}).split(".")[1]
    tampered = f"{header}.{admin_payload}.{signature}"
    cases = {
        None: "PGRST302",
        "": "PGRST302",
        "not-a-jwt": "PGRST301",
        token(claims, expires_in=-60): "PGRST303",
        other_secret: "PGRST301",
        tampered: "PGRST301",
        token({**claims, "role": "postgres"}): "PGRST303",
        jwt.encode(claims, SECRET, algorithm="HS256"): "PGRST303",  # no exp
    }
    before = message_count(edge)
    for bearer, code in cases.items():
        answer = call(edge, body, bearer)
        assert (answer.status, answer.body["code"]) == (401, code), bearer
        assert answer.headers["www-authenticate"].startswith("Bearer")
    assert call(edge, body, token(claims, expires_in=-60)).body["message"] == "JWT expired"
    assert message_count(edge) == before


def test_a_token_of_the_projects_jwks(edge: Edge) -> None:
    """Hosted Supabase signs user JWTs with an asymmetric key and gives functions SUPABASE_JWKS."""
    claims = edge.data.claims("employee")
    body = {"group_jid": G1, "content": "ES256"}
    signed = token(claims, key=edge.es256_key, kid="test-key")
    assert call(edge, body, signed).status == 202
    stranger = token(claims, key=ec.generate_private_key(ec.SECP256R1()), kid="test-key")
    assert call(edge, body, stranger).status == 401


def test_methods_and_paths(edge: Edge) -> None:
    bearer = user_token(edge, "employee")
    answer = call(edge, None, bearer, method="GET")
    assert (answer.status, answer.headers["allow"]) == (405, "POST")
    body = {"group_jid": G1, "content": "yol"}
    assert call(edge, body, bearer, path="/api/messages/send").status == 202
    assert call(edge, body, bearer, path="/send-message").status == 202
    assert call(edge, body, bearer, path="/elsewhere").status == 404


def test_an_unreachable_database_is_503(edge: Edge) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    with running_function(closed) as base:
        unreachable = Edge(base, edge.conn, edge.data, edge.es256_key)
        answer = call(unreachable, {"group_jid": G1, "content": "x"}, user_token(edge, "employee"))
    assert (answer.status, answer.body["code"]) == (503, "PGRST000")


def test_the_bench_prints_json(pg_server) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--seconds", "1", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "WA_DATABASE_URL": server_url(pg_server)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["edge_function"]["requests_per_s"] > 0
    assert report["sql"]["p99_ms"] > 0
    assert report["ratio_edge_to_sql_requests_per_s"] > 0


def test_typescript_is_formatted_linted_and_type_checked() -> None:
    for command in (["fmt", "--check"], ["lint"], ["check", "--frozen", "index.ts"]):
        done = subprocess.run(
            [str(DENO), *command], cwd=FUNCTION_DIR, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
