"""An embedded local PostgreSQL for the demo and the benchmarks: initdb and pg_ctl into a folder.

PostgreSQL refuses to run as root, so when we are root the server runs as the `postgres` user
(its folder is handed to that user). The server listens on 127.0.0.1 on a free port and on a
socket inside its folder; nothing outside the folder is touched.
"""

import hashlib
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path

from poller.errors import ConfigError, DatabaseUnavailable
from poller.resources import PROJECT_ROOT


def pg_bindir() -> Path:
    """The newest installed PostgreSQL's bin folder (WA_PG_BINDIR overrides)."""
    if override := os.environ.get("WA_PG_BINDIR"):
        return Path(override)
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name)
    )
    if candidates:
        return candidates[-1].parent
    found = shutil.which("pg_ctl")
    if found is None:
        raise ConfigError(
            "PostgreSQL server binaries not found: install postgresql or set WA_PG_BINDIR"
        )
    return Path(found).parent


def server_options(max_connections: int = 200) -> str:
    """postgres -c options: logical decoding on, wal2json allowed as the Realtime plugin."""
    options = (
        f"-c wal_level=logical -c max_replication_slots=10 -c max_wal_senders=10 "
        f"-c max_connections={max_connections}"
    )
    described = subprocess.run(
        [str(pg_bindir() / "postgres"), "--describe-config"], capture_output=True, text=True
    ).stdout
    # Newer minor releases only let listed libraries serve as logical decoding plugins.
    if "output_plugin_libraries" in described:
        options += " -c output_plugin_libraries=pgoutput,wal2json"
    return options


def default_folder(name: str) -> Path:
    """PROJECT/.local/<name>, or a folder under /var/tmp when we are root and the postgres
    user cannot reach the project (a checkout inside root's home, say)."""
    folder = PROJECT_ROOT / ".local" / name
    if os.geteuid() == 0:
        reachable = subprocess.run(
            ["runuser", "-u", "postgres", "--", "test", "-x", str(PROJECT_ROOT)], check=False
        )
        if reachable.returncode != 0:
            tag = hashlib.sha256(str(PROJECT_ROOT).encode()).hexdigest()[:12]
            folder = Path("/var/tmp") / f"wa-outbox-{tag}" / name
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalPostgres:
    """One PostgreSQL cluster in `folder` (data in folder/data, socket and log beside it)."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder.resolve()
        self.datadir = self.folder / "data"
        self.port = port or free_port()
        self._as_root = os.geteuid() == 0
        self._bindir = pg_bindir()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            owner = pwd.getpwnam("postgres")
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
        if self.running():
            self.stop()
        if not (self.datadir / "PG_VERSION").exists():
            self._run(
                "initdb",
                "-D",
                str(self.datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            )
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
        options += server_options()
        self._run(
            "pg_ctl",
            "start",
            "-w",
            "-D",
            str(self.datadir),
            "-o",
            options,
            "-l",
            str(self.folder / "server.log"),
        )

    def stop(self, mode: str = "fast") -> None:
        if self.running():
            self._run("pg_ctl", "stop", "-w", "-D", str(self.datadir), "-m", mode)

    def running(self) -> bool:
        if not self.datadir.exists():
            return False
        return self._run("pg_ctl", "status", "-D", str(self.datadir), check=False) == 0

    def create_database(self, name: str) -> str:
        self._run(
            "psql",
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-c",
            f'drop database if exists "{name}" with (force)',
            "-c",
            f'create database "{name}"',
        )
        return self.url_for(name)

    def _run(self, program: str, *args: str, check: bool = True) -> int:
        command = [str(self._bindir / program), *args]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if check and done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise DatabaseUnavailable(
                f"{program} failed: {detail[-1] if detail else done.returncode}"
                f" (log: {self.folder / 'server.log'})"
            )
        return done.returncode
