"""A throwaway PostgreSQL cluster for the test suite and the benchmarks.

`PostgresCluster` runs `initdb` into a fresh folder under /tmp, starts the server with `pg_ctl`
on a free port that listens on 127.0.0.1 only (no unix socket), and on `stop()` shuts it down
at once and deletes the folder. The server trusts every local connection as the `postgres`
user and skips fsync, so it is quick to start and quick to write to, and not for real data.

PostgreSQL refuses to run as root, so when the tests run as root the server programs run as the
`postgres` system user (which owns the folder); otherwise they run as the current user.

`python -m tests.pg` runs one in the foreground with a `jambot` database, prints
`DATABASE_URL=...` and stops it on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

SERVER_USER = "postgres"
"""The system user that runs initdb and the server when the tests run as root."""

SUPERUSER = "postgres"
"""The database superuser that initdb creates; every URL connects as this user."""

SETTINGS = {
    # nothing here needs to survive a crash: the cluster is deleted afterwards
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # several bot processes, each with its own pool, in the multi-process tests and benchmarks
    "max_connections": "300",
    # TCP on loopback only; no unix socket (the folder may be unreachable for the caller)
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "timezone": "'UTC'",
}

_START_ATTEMPTS = 3
_START_TIMEOUT_S = 30


def find_bindir() -> Path | None:
    """The folder with PostgreSQL's server programs (initdb, pg_ctl, postgres, psql), or None.

    `pg_config --bindir` first; else the newest /usr/lib/postgresql/<version>/bin.
    """
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            found = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(found.stdout.strip()))

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    installed = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if version(p)]
    candidates.extend(sorted(installed, key=version, reverse=True))
    for bindir in candidates:
        if all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres", "psql")):
            return bindir
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def quote_ident(name: str) -> str:
    """`name` as a quoted SQL identifier."""
    if not name or "\0" in name:
        raise ValueError(f"not a usable database name: {name!r}")
    return '"' + name.replace('"', '""') + '"'


class PostgresError(RuntimeError):
    """initdb, pg_ctl or psql failed; the message carries what they printed."""


class PostgresCluster:
    """One throwaway PostgreSQL cluster on 127.0.0.1.

    Use it as a context manager, or call `start()` and `stop()` (in a `finally`). A cluster that
    was started and never stopped is stopped when the interpreter exits.
    """

    def __init__(self, bindir: Path | None = None, *, port: int | None = None) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise PostgresError("no PostgreSQL server programs found (initdb, pg_ctl)")
        self.bindir = found
        self.host = "127.0.0.1"
        self._requested_port = port
        self.port: int | None = None
        self.root: Path | None = None
        self.data_dir: Path | None = None
        self.log_file: Path | None = None
        self._run_as: list[str] = []
        self._owner: tuple[int, int] | None = None
        self._running = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> PostgresCluster:
        """Make the cluster and start its server; returns once it takes connections."""
        if self.root is not None:
            raise PostgresError("this cluster was started already")
        self._run_as, self._owner = self._server_user()
        atexit.register(self.stop)
        try:
            self.root = Path(tempfile.mkdtemp(prefix="jambot-pg-", dir="/tmp"))
            if self._owner is not None:
                os.chown(self.root, *self._owner)
            self.data_dir = self.root / "data"
            self.log_file = self.root / "postgres.log"
            self._server(
                "initdb",
                ["-D", str(self.data_dir), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8"],
                ["--locale=C", "--no-sync", "--no-instructions"],
            )
            with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
                conf.write("\n# tests/pg.py\n")
                conf.writelines(f"{key} = {value}\n" for key, value in SETTINGS.items())
            self._start_server()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_server(self) -> None:
        assert self.data_dir is not None and self.log_file is not None
        for attempt in range(1, _START_ATTEMPTS + 1):
            port = self._requested_port or free_port()
            try:
                self._server(
                    "pg_ctl",
                    ["start", "-w", "-t", str(_START_TIMEOUT_S), "-D", str(self.data_dir)],
                    ["-l", str(self.log_file), "-o", f"-p {port}"],
                )
            except PostgresError:
                # another process took the port between the probe and the bind: try another
                taken = "could not bind" in self.log_text()
                if not taken or self._requested_port is not None or attempt == _START_ATTEMPTS:
                    raise
                continue
            self.port = port
            self._running = True
            return

    def stop(self) -> None:
        """Stop the server at once (no checkpoint) and delete the cluster's folder. Idempotent."""
        atexit.unregister(self.stop)
        if self.data_dir is not None and (self.data_dir / "postmaster.pid").exists():
            try:
                self._server(
                    "pg_ctl", ["stop", "-w", "-m", "immediate", "-D", str(self.data_dir)], []
                )
            except PostgresError:
                self._kill_postmaster()
        self._running = False
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        self.root = self.data_dir = self.log_file = None

    def _kill_postmaster(self) -> None:
        """The last resort when pg_ctl can't stop the server: kill its process."""
        assert self.data_dir is not None
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- databases ---------------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        """The connection URL of database `dbname` in this cluster."""
        if self.port is None or not self._running:
            raise PostgresError("the cluster isn't running")
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """Create an empty database `name`; returns its URL."""
        self.psql(f"CREATE DATABASE {quote_ident(name)}")
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database `name` if it exists, closing any connections still open to it."""
        self.psql(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run `sql` with psql in database `dbname`; returns what it printed (unaligned)."""
        if self.port is None or not self._running:
            raise PostgresError("the cluster isn't running")
        command = [
            str(self.bindir / "psql"),
            "-X",  # no ~/.psqlrc
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-d",
            dbname,
            "-c",
            sql,
        ]
        return self._run(command, run_as=[])

    def log_text(self) -> str:
        """What the server has logged so far ("" before it started)."""
        if self.log_file is None:
            return ""
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    # -- running programs --------------------------------------------------------------------

    @staticmethod
    def _server_user() -> tuple[list[str], tuple[int, int] | None]:
        """The command prefix that runs a program as the server's user, and that user's ids."""
        if os.geteuid() != 0:
            return [], None
        try:
            user = pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise PostgresError(
                f"running as root, and PostgreSQL won't: there is no {SERVER_USER!r} user"
            ) from None
        ids = (user.pw_uid, user.pw_gid)
        runuser = shutil.which("runuser")
        if runuser is not None:
            return [runuser, "-u", SERVER_USER, "--"], ids
        su = shutil.which("su")
        if su is not None:
            return [su, SERVER_USER, "-s", "/bin/sh", "-c"], ids
        raise PostgresError("running as root, with neither runuser nor su to drop to postgres")

    def _server(self, program: str, args: Sequence[str], more: Sequence[str]) -> str:
        return self._run([str(self.bindir / program), *args, *more], run_as=self._run_as)

    def _run(self, command: list[str], *, run_as: list[str]) -> str:
        if run_as and run_as[-1] == "-c":  # su takes one shell command line
            full = [*run_as, shlex.join(command)]
        else:
            full = [*run_as, *command]
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"
        try:
            done = subprocess.run(
                full,
                cwd=self.root or "/",
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=_START_TIMEOUT_S + 30,
            )
        except subprocess.TimeoutExpired as timeout:
            raise PostgresError(f"{shlex.join(command)} took over {timeout.timeout}s") from None
        if done.returncode != 0:
            log = self.log_text().strip()
            raise PostgresError(
                f"{shlex.join(command)} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}" + (f"\nserver log:\n{log[-4000:]}" if log else "")
            )
        return done.stdout


def main(argv: Sequence[str] | None = None) -> int:
    """Run a cluster in the foreground until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.pg",
        description="Run a throwaway PostgreSQL on 127.0.0.1 and print its DATABASE_URL.",
    )
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    parser.add_argument("--database", default="jambot", help="the database to create")
    options = parser.parse_args(argv)

    def finish(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGINT, finish)
    signal.signal(signal.SIGTERM, finish)
    cluster = PostgresCluster(port=options.port)
    try:
        began = time.monotonic()
        cluster.start()
        url = cluster.create_database(options.database)
        print(f"DATABASE_URL={url}", flush=True)
        print(
            f"PostgreSQL in {cluster.root} ready in {time.monotonic() - began:.1f}s;"
            " Ctrl-C stops it and deletes it",
            file=sys.stderr,
            flush=True,
        )
        while True:
            signal.pause()
    finally:
        # a second Ctrl-C must not cut the cleanup short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
