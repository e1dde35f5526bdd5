"""PostgreSQL from Debian's packages: initdb into a scratch directory, run on 127.0.0.1, one database and user.

``initdb`` refuses to run as root, so as root the server runs as the ``postgres`` OS user (created by
the Debian package) with its data directory under ``/tmp/k2-postgres`` (root's home is not readable
by it). Missing binaries are installed with ``apt-get install -y postgresql`` when running as root and
``install=True``; otherwise a DevServiceError says how to get them. Durability is switched off
(``fsync=off``): this server is for development and tests only.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from k2.devservices.common import HOST, ManagedProcess, free_port, wait_until
from k2.errors import DevServiceError
from k2.logging import get_logger

log = get_logger(__name__)

PG_ROOT = Path("/usr/lib/postgresql")
RUN_AS = "postgres"


def postgres_bindir(*, install: bool = True) -> Path:
    """The newest ``/usr/lib/postgresql/<ver>/bin`` (installing the Debian package if allowed)."""
    for attempt in range(2):
        versions = sorted(
            (p for p in PG_ROOT.glob("*/bin") if (p / "initdb").exists()),
            key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        )
        if versions:
            return versions[-1]
        if attempt == 0 and install and os.geteuid() == 0 and shutil.which("apt-get"):
            _apt_install("postgresql")
    raise DevServiceError(
        "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: "
        "install them with `apt-get install -y postgresql` (as root)"
    )


def _apt_install(package: str) -> None:
    log.info("apt_install", package=package)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode == 0:  # noqa: S603
        return
    update = subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True, check=False)  # noqa: S607
    proc = subprocess.run(install, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if proc.returncode != 0:
        raise DevServiceError(f"apt-get install {package} failed:\n{update.stderr[-800:]}{proc.stderr[-1500:]}")


@dataclass(frozen=True)
class PostgresCredentials:
    user: str = "k2"
    password: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)
    database: str = "k2"


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with one database owned by one login role."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        credentials: PostgresCredentials | None = None,
        install: bool = True,
        die_with_parent: bool = True,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.credentials = credentials or PostgresCredentials()
        self.install = install
        self.die_with_parent = die_with_parent
        self.process: ManagedProcess | None = None
        self._user = RUN_AS if os.geteuid() == 0 else None
        if self._user is None:
            self.data_dir = workdir / "pgdata"
        else:  # root: a directory the postgres user can reach
            digest = hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:12]
            self.data_dir = Path("/tmp/k2-postgres") / digest  # noqa: S108

    @property
    def sqlalchemy_url(self) -> str:
        c = self.credentials
        return f"postgresql+psycopg://{c.user}:{c.password}@{HOST}:{self.port}/{c.database}"

    def _conninfo(self, user: str, password: str, dbname: str) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(host=HOST, port=self.port, user=user, password=password, dbname=dbname, connect_timeout=2)

    def start(self, timeout_s: float = 60.0, *, reuse: bool = False) -> None:
        """Create the cluster and start it; with ``reuse``, start the cluster already in the data
        directory (a restart: its role and database exist, with this server's credentials)."""
        bindir = postgres_bindir(install=self.install)
        superuser_password = secrets.token_hex(16)
        fresh = not (self.data_dir / "PG_VERSION").exists()
        if reuse and fresh:
            raise DevServiceError(f"no PostgreSQL cluster to restart in {self.data_dir}")
        if fresh:
            self._initdb(bindir, superuser_password)
        elif not reuse:
            raise DevServiceError(f"{self.data_dir} exists from an earlier run; remove it or use another workdir")
        self.workdir.mkdir(parents=True, exist_ok=True)
        settings = {
            "listen_addresses": HOST,
            "port": str(self.port),
            "unix_socket_directories": str(self.data_dir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        cmd = [str(bindir / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            cmd += ["-c", f"{key}={value}"]
        self.process = ManagedProcess(
            "postgres",
            cmd,
            self.workdir / "postgres.log",
            user=self._user,
            stop_signal=signal.SIGINT,  # "fast" shutdown
            die_with_parent=self.die_with_parent,
        )
        c = self.credentials
        user, password, database = (
            ("postgres", superuser_password, "postgres") if fresh else (c.user, c.password, c.database)
        )
        waited = wait_until(
            lambda: self._can_connect(user, password, database),
            what=f"PostgreSQL on {HOST}:{self.port}",
            timeout_s=timeout_s,
            process=self.process,
            interval_s=0.1,
        )
        if fresh:
            self._create_role_and_database(superuser_password)
        log.info("postgres_ready", port=self.port, database=self.credentials.database, waited_s=round(waited, 2))

    def _initdb(self, bindir: Path, superuser_password: str) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir(parents=True, mode=0o700)
        pwfile = self.data_dir.parent / f".{self.data_dir.name}.pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(superuser_password + "\n")
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chmod(self.data_dir.parent, 0o755)  # noqa: S103 (traversable by the postgres user)
            for path in (self.data_dir, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        cmd = [str(bindir / "initdb"), "-D", str(self.data_dir), "-U", "postgres", f"--pwfile={pwfile}"]
        cmd += ["--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"]
        try:
            proc = subprocess.run(  # noqa: S603
                cmd, capture_output=True, text=True, check=False, user=self._user, group=self._user, extra_groups=[]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise DevServiceError(f"initdb failed:\n{proc.stdout[-1000:]}{proc.stderr[-1000:]}")

    def _can_connect(self, user: str, password: str, dbname: str) -> bool:
        import psycopg

        try:
            with psycopg.connect(self._conninfo(user, password, dbname)):
                return True
        except psycopg.OperationalError:
            return False

    def _create_role_and_database(self, superuser_password: str) -> None:
        import psycopg
        from psycopg import sql

        c = self.credentials
        with psycopg.connect(self._conninfo("postgres", superuser_password, "postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(c.user), sql.Literal(c.password))
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(c.database), sql.Identifier(c.user))
            )

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        if self._user is not None:  # root: the scratch data directory lives outside workdir
            shutil.rmtree(self.data_dir, ignore_errors=True)
