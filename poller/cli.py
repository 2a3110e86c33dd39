"""The `wa-poller` command line."""

import argparse
import asyncio
import logging
import os
import sys
import uuid

from poller.admin import add_session, list_sessions, pair
from poller.bootstrap import bootstrap
from poller.daemon import run_daemon
from poller.db import conninfo_problem
from poller.demo import run_demo
from poller.errors import ConfigError, PollerError, TaskDied
from poller.settings import Settings, load_settings

log = logging.getLogger("poller")

STRAGGLERS = 0.2  # seconds for tasks still running after the daemon returned to end


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wa-poller", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    db = commands.add_parser("db", help="database administration")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    boot = db_commands.add_parser(
        "bootstrap",
        help="make a database ready: Supabase compatibility (if missing), pgmq, migrations",
    )
    boot.add_argument("--database-url", help="PostgreSQL URL (default: $WA_DATABASE_URL)")
    boot.add_argument(
        "--poller-password",
        help="also enable LOGIN for the wa_poller role with this password",
    )
    boot.add_argument(
        "--session-store-password",
        help="also enable LOGIN for wa_session_store (WA_SESSION_STORE=postgres)",
    )
    run = commands.add_parser("run", help="the poller daemon")
    run.add_argument(
        "--transport", choices=["simulated", "neonize"], help="default: $WA_TRANSPORT or simulated"
    )
    run.add_argument("--database-url", help="default: $WA_DATABASE_URL")

    sessions = commands.add_parser("sessions", help="WhatsApp sessions (admin)")
    session_commands = sessions.add_subparsers(dest="sessions_command", required=True)
    add = session_commands.add_parser("add", help="create a session to pair")
    add.add_argument("--phone", help="the number, for the record (set for real when paired)")
    add.add_argument("--owner", help="e-mail of the admin who owns the number")
    add.add_argument("--database-url", help="default: $WA_DATABASE_URL (an admin role)")
    listing = session_commands.add_parser("list", help="sessions with status and holder")
    listing.add_argument("--database-url", help="default: $WA_DATABASE_URL")

    pair = commands.add_parser("pair", help="show a session's QR code until the phone scans it")
    pair.add_argument("session", type=uuid.UUID)
    pair.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    pair.add_argument("--database-url", help="default: $WA_DATABASE_URL")

    demo = commands.add_parser(
        "demo", help="embedded PostgreSQL, bootstrap, demo data, messages through send_message"
    )
    demo.add_argument("--database-url", help="use this database instead of an embedded one")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        logging.basicConfig(
            level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        if args.command == "db" and args.db_command == "bootstrap":
            url = _url(args, settings)
            report = bootstrap(url, args.poller_password, args.session_store_password)
            for line in report.lines():
                print(line)
        elif args.command == "sessions" and args.sessions_command == "add":
            session_id = add_session(_url(args, settings), args.phone, args.owner)
            print(session_id)
            print(f"next: wa-poller pair {session_id}", file=sys.stderr)
        elif args.command == "sessions":
            for line in list_sessions(_url(args, settings)):
                print(line)
        elif args.command == "pair":
            phone = pair(_url(args, settings), args.session, args.timeout)
            print(f"paired: {phone}")
        elif args.command == "run":
            overrides = {"database_url": _url(args, settings)}
            if args.transport:
                overrides["transport"] = args.transport
            return _run(settings.model_copy(update=overrides))
        elif args.command == "demo":  # an embedded PostgreSQL unless a URL is given
            run_demo(_url(args, settings) if args.database_url or settings.database_url else None)
    except PollerError as exc:
        print(f"wa-poller: error: {exc}", file=sys.stderr)
        return _exit_code(exc)
    return 0


def _exit_code(exc: PollerError) -> int:
    return 2 if isinstance(exc, ConfigError) else 1


def _run(settings: Settings) -> int:
    """asyncio.run(run_daemon(...)), except that the process ends even if a task outlives the
    daemon by ignoring its cancellation (a cleanup that failed once the pool was closed turns
    the cancellation into an error): asyncio.run would wait for it for ever, and a stop under
    systemd would end in SIGKILL."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run_daemon(settings))
        code = 0
    except TaskDied:
        code = 1  # logged with its traceback when it died
    except PollerError as exc:  # said here: _end may leave without returning to main
        print(f"wa-poller: error: {exc}", file=sys.stderr)
        code = _exit_code(exc)
    except Exception:
        log.exception("the poller failed")
        code = 1
    _end(loop, settings, code)
    return code


def _end(loop: asyncio.AbstractEventLoop, settings: Settings, code: int) -> None:
    """After the daemon, whatever ended it: cancel what is left and leave."""
    rest = asyncio.all_tasks(loop)
    for task in rest:
        task.cancel()
    if rest:
        loop.run_until_complete(asyncio.wait(rest, timeout=STRAGGLERS))
    stuck = sorted(task.get_name() for task in rest if not task.done())
    if stuck:
        log.warning("exiting with task(s) that ignored the stop: %s", ", ".join(stuck))
    if stuck or settings.transport == "neonize":
        # neonize's connect() threads are not daemons and a hung one would keep the process
        # alive after the stop: everything is in the database, leave now.
        logging.shutdown()
        os._exit(code)
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


def _url(args: argparse.Namespace, settings: Settings) -> str:
    """--database-url, checked as WA_DATABASE_URL is, or WA_DATABASE_URL."""
    url = args.database_url or settings.database_url
    if not url:
        raise ConfigError("no database URL: pass --database-url or set WA_DATABASE_URL")
    if args.database_url and (problem := conninfo_problem(url)):
        raise ConfigError(f"invalid database URL (--database-url): {problem}")
    return url


if __name__ == "__main__":
    sys.exit(main())
