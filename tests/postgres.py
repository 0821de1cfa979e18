"""A throwaway PostgreSQL server for tests and benchmarks: initdb, start on a free port, stop, remove.

The server listens on 127.0.0.1 only and asks TCP clients for a password
(scram-sha-256), so the tests exercise the password path for real; the
superuser connects over the server's own Unix socket (trust) to set it up.
Run as root, the server runs as the `postgres` user (initdb refuses root).
Binaries: IMGPIPE_PG_BIN, else the newest /usr/lib/postgresql/*/bin (Debian's
`postgresql` package; .ci/run installs it where missing).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile

ROLE = "imgpipe"


class Unavailable(RuntimeError):
    """No PostgreSQL binaries here (or no user to run them as)."""


def find_bin_dir() -> str:
    """The directory holding initdb, pg_ctl and psql; Unavailable when there is none."""
    given = os.environ.get("IMGPIPE_PG_BIN")
    candidates = (
        [given]
        if given
        else sorted(
            glob.glob("/usr/lib/postgresql/*/bin"),
            key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0,
        )
    )
    for bin_dir in reversed(candidates):
        if all(os.path.exists(os.path.join(bin_dir, tool)) for tool in ("initdb", "pg_ctl", "psql")):
            return bin_dir
    raise Unavailable(
        "PostgreSQL server binaries not found (set IMGPIPE_PG_BIN, or `apt-get install -y postgresql`: "
        ".ci/run does this)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Server:
    """A running throwaway server: connect as `user` with `password` over TCP at host:port."""

    bin_dir: str
    root: str
    port: int
    password: str
    run_as: list[str]
    host: str = "127.0.0.1"
    user: str = ROLE

    @property
    def data_dir(self) -> str:
        return os.path.join(self.root, "data")

    def url(self, dbname: str) -> str:
        """The `metadata` setting for database `dbname` (created by ML Metadata on first use)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def _tool(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self.run_as, os.path.join(self.bin_dir, name), *args],
            check=check,
            capture_output=True,
            text=True,
            cwd=self.root,
        )

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run `sql` as the superuser over the Unix socket; return psql's unaligned output."""
        out = self._tool(
            "psql",
            "-h",
            self.root,
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            dbname,
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        )
        return out.stdout.strip()

    def databases(self) -> list[str]:
        return self.psql("SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1").splitlines()

    def stop(self) -> None:
        """Stop the server and remove its files."""
        self._tool("pg_ctl", "stop", "-D", self.data_dir, "-m", "immediate", "-w", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def start() -> Server:
    """initdb + pg_ctl start on a free port in a fresh temp dir; the `imgpipe` role has a random password."""
    bin_dir = find_bin_dir()
    run_as: list[str] = []
    root = tempfile.mkdtemp(prefix="imgpipe-pg-")
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            raise Unavailable(
                "running as root, but there is no `postgres` user to run the server as"
            ) from None
        os.chown(root, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    server = Server(
        bin_dir=bin_dir, root=root, port=_free_port(), password=secrets.token_urlsafe(18), run_as=run_as
    )
    try:
        server._tool(
            "initdb",
            "-D",
            server.data_dir,
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        )
        options = (
            f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        server._tool(
            "pg_ctl",
            "start",
            "-D",
            server.data_dir,
            "-w",
            "-t",
            "60",
            "-l",
            os.path.join(root, "server.log"),
            "-o",
            options,
        )
        server.psql(f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{server.password}'")
    except subprocess.CalledProcessError as e:
        log = ""
        if os.path.exists(os.path.join(root, "server.log")):
            with open(os.path.join(root, "server.log"), encoding="utf-8", errors="replace") as f:
                log = f.read()[-2000:]
        server.stop()
        raise RuntimeError(f"PostgreSQL did not start: {e.cmd[-1] if e.cmd else ''}: {e.stderr}{log}") from e
    return server
