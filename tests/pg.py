"""A throwaway PostgreSQL server for the tests, started once per session.

`initdb` into a temporary directory (as the `postgres` user when the tests run as root: the
server refuses root), then the server on a Unix socket in that directory and on 127.0.0.1 at a
free port, with durability off (the data is thrown away). The tests log in over TCP with a
password, as a user's `postgresql://` URL does, so what a password may leak is tested for real.
`pg_url` gives each test a database of its own. Without the server binaries (Debian's
`postgresql` package; `.ci/run` installs it) or psycopg, or when the server does not start, the
PostgreSQL tests skip and say which.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

USER = "crewbatch"
TEST_HOSTS = "10.77.0.0/16"
# Characters a URL must escape, so that both quoting and redaction are exercised.
PASSWORD = "s3cret:pw@test/#"
_databases = itertools.count(1)


def server_binaries() -> Path | None:
    """The directory of initdb and pg_ctl: on PATH, else Debian's newest /usr/lib/postgresql."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl", path=str(Path(found).parent)):
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    bindir: Path
    home: Path
    port: int
    run_as: str | None

    @property
    def data(self) -> Path:
        return self.home / "data"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bindir / args[0]), *args[1:]], user=self.run_as,
                              env={**os.environ, "HOME": str(self.home), "LC_ALL": "C"},
                              capture_output=True, text=True, timeout=120, check=check)

    def start(self) -> None:
        pwfile = self.home / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            for p in (self.home, pwfile):
                os.chown(p, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}", "-E", "UTF8",
                  "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")
        # The tests' own hosts (network namespaces, tests/test_multihost.py) reach it over veth
        # links in 10.77.0.0/16: listen on every address, let only those and loopback in.
        with open(self.data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all {USER} {TEST_HOSTS} scram-sha-256\n")
        options = (f"-k {self.home} -c listen_addresses='*' -p {self.port} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.home / "server.log"), "-w",
                  "-t", "60", "-o", options, "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)

    def log_tail(self) -> str:
        try:
            return " | ".join((self.home / "server.log").read_text().splitlines()[-5:])
        except OSError:
            return ""

    def admin(self):
        import psycopg

        return psycopg.connect(host=str(self.home), port=self.port, user=USER, dbname="postgres",
                               autocommit=True)

    def url(self, dbname: str, password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{quote(password, safe='')}@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        name = f"test_{os.getpid()}_{next(_databases)}"
        with self.admin() as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return name


def _why_not() -> str | None:
    """What keeps this machine from starting a test server, or None."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test]')"
    if server_binaries() is None:
        return ("no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in "
                "/usr/lib/postgresql/*/bin; install Debian's `postgresql` package")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return ("running as root and there is no `postgres` user to run the server as "
                    "(PostgreSQL refuses root); create one with `useradd --system postgres`")
    return None


@pytest.fixture(scope="session")
def pg_server():
    """The session's PostgreSQL server; skips every PostgreSQL test when none can be started."""
    why = _why_not()
    if why:
        pytest.skip(f"PostgreSQL tests skipped: {why}")
    home = Path(tempfile.mkdtemp(prefix="crewbatch-pg-"))
    server = Server(server_binaries(), home, free_port(),
                    "postgres" if os.geteuid() == 0 else None)
    try:
        server.start()
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
        pytest.skip(f"PostgreSQL tests skipped: the test server did not start ({exc}; "
                    f"{' '.join(detail.split())[:300]} {server.log_tail()})")
    yield server
    server.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server) -> str:
    """A `postgresql://` URL, with password, of a new empty database for this test."""
    return pg_server.url(pg_server.new_database())
