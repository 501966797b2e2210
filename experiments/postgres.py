"""A PostgreSQL cluster of the project's own, the store of `ctr server --backend postgres`.

    cluster = LocalPostgres(Path("mlflow-server"), log=print)
    uri = cluster.start()  # initdb on first use, then pg_ctl start; a SQLAlchemy URI
    ...                    # MLflow's server writes through `uri`
    cluster.stop()         # pg_ctl stop -m fast

Layout under the server directory DIR (kept between starts, so runs persist):

    DIR/postgres/data          the cluster (initdb), owned by the user it runs as
    DIR/postgres/socket        its unix socket
    DIR/postgres/postgres.log  its log
    DIR/postgres.password      the password of the database user `mlflow` (mode 600)

It listens on 127.0.0.1 (a port free at each start) and on the unix socket only,
with password (SCRAM) authentication, and MLflow connects through the socket
with psycopg 3. The server binaries come from Debian's `postgresql` package,
which keeps them off PATH in /usr/lib/postgresql/<version>/bin; `pg_config
--bindir` and PATH are tried after. initdb refuses to run as root, so under
root the cluster belongs to, and runs as, the system user `postgres`
(`runuser -u postgres --`); otherwise it runs as the current user.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from ctr.errors import CTRError

DB_NAME = "mlflow"
DB_USER = "mlflow"
RUN_AS_ROOT = "postgres"  # the system user Debian's package creates
DEBIAN_ROOT = Path("/usr/lib/postgresql")  # <version>/bin: where Debian puts the server binaries
_MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes, the last one NUL
_INSTALL_HINT = "install Debian's package: apt-get install -y postgresql (or `make install`)"


class PostgresError(CTRError, RuntimeError):
    """The local PostgreSQL cluster cannot be set up, started or reached; the
    message names the step, its output and the fix."""


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", path.parent.name)) or (0,)


def find_server_bindir(version: str | None = None, debian_root: Path = DEBIAN_ROOT) -> Path:
    """The directory holding initdb and pg_ctl, newest version first; `version` (a
    cluster's PG_VERSION) picks that major version's, the only ones that can run it."""
    candidates = sorted(debian_root.glob("*/bin"), key=_version_key, reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(Path(out.stdout.strip()))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    found = [d for d in candidates if (d / "initdb").is_file() and (d / "pg_ctl").is_file()]
    if version is not None:
        same = [d for d in found if _server_version(d) == version]
        if not same:
            raise PostgresError(
                f"the cluster was made by PostgreSQL {version}, whose server binaries are not "
                f"installed (found: {[str(d) for d in found] or 'none'}); install "
                f"postgresql-{version}, or upgrade the cluster with pg_upgrade"
            )
        return same[0]
    if not found:
        raise PostgresError(
            f"PostgreSQL server binaries (initdb, pg_ctl) not found in {debian_root}/*/bin, "
            f"`pg_config --bindir` or PATH; {_INSTALL_HINT}"
        )
    return found[0]


def _server_version(bindir: Path) -> str | None:
    """The major version of the binaries in `bindir` ("15"), as PG_VERSION spells it."""
    out = subprocess.run([str(bindir / "pg_ctl"), "--version"], capture_output=True, text=True)
    match = re.search(r"(\d+)(?:\.(\d+))?", out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return str(major) if major >= 10 else f"{major}.{match.group(2)}"


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


class LocalPostgres:
    """One cluster under `root` (the server directory), started and stopped by us.

    `log` receives one line per thing worth telling the user (a first initdb, a
    cluster left running by a killed earlier start, ...).
    """

    def __init__(self, root: Path, log: Callable[[str], None] = print) -> None:
        self.root = Path(root).resolve()
        self.home = self.root / "postgres"
        self.data = self.home / "data"
        self.socket_dir = self.home / "socket"
        self.logfile = self.home / "postgres.log"
        self.password_file = self.root / "postgres.password"
        self.log = log
        self.port: int | None = None
        self._bindir: Path | None = None
        # under root every command runs as the system user postgres (initdb refuses root)
        self._owner = RUN_AS_ROOT if os.geteuid() == 0 else None

    # ------------------------------------------------------------------ helpers
    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self._owner, "--", *argv] if self._owner else argv

    def _run(self, argv: list[str], what: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(self._as_owner(argv), capture_output=True, text=True)
        if check and proc.returncode != 0:
            output = (proc.stdout + proc.stderr).strip()[-2000:]
            log = f"\npostgres.log ends with:\n{_tail(self.logfile)}" if what == "start" else ""
            raise PostgresError(f"PostgreSQL {what} failed ({' '.join(argv)}):\n{output}{log}")
        return proc

    def _bin(self, name: str) -> str:
        assert self._bindir is not None, "start() finds the binaries first"
        return str(self._bindir / name)

    def _give_to_owner(self, *paths: Path) -> None:
        if self._owner:
            for path in paths:
                shutil.chown(path, user=self._owner, group=self._owner)

    @property
    def initialised(self) -> bool:
        return (self.data / ".ctr-initialised").is_file()

    # ------------------------------------------------------------------- set-up
    def _prepare_dirs(self) -> None:
        if self._owner:
            try:
                import pwd

                pwd.getpwnam(self._owner)
            except KeyError:
                raise PostgresError(
                    f"running as root, the cluster runs as the system user {self._owner!r}, "
                    f"which does not exist; {_INSTALL_HINT}, or run ctr server as a non-root user"
                ) from None
            if not shutil.which("runuser"):
                raise PostgresError(
                    "running as root needs `runuser` (util-linux) to drop to postgres"
                )
        self.home.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self._give_to_owner(self.home, self.socket_dir)
        if self._owner and self._run(["test", "-w", str(self.home)], "", check=False).returncode:
            raise PostgresError(
                f"the system user {self._owner} cannot write {self.home}: a directory above it is "
                "closed to other users (as /root and pytest's temporary directories are); pick a "
                "--dir under a directory everyone may enter (e.g. /var/tmp/ctr-mlflow, or one in "
                "this checkout), or run ctr server as a non-root user"
            )

    def _initdb(self) -> None:
        if self.data.exists():  # an earlier first start stopped half-way: nothing was stored yet
            self.log(f"removing {self.data}, left by an interrupted first start")
            shutil.rmtree(self.data)
        password = secrets.token_urlsafe(24)
        self.password_file.write_text(password + "\n")
        self.password_file.chmod(0o600)
        pwfile = self.home / "initdb.pw"  # readable by the owner only, removed at once
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        self._give_to_owner(pwfile)
        self.log(f"initdb: a new PostgreSQL cluster in {self.data}")
        try:
            self._run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    DB_USER,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                ],
                "initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n# port, addresses and socket: written by ctr server at each start\n")
            conf.write("include_if_exists = 'ctr-server.conf'\n")
        marker = self.data / ".ctr-initialised"
        marker.write_text("")
        self._give_to_owner(marker)

    def _write_settings(self, port: int) -> None:
        """Port, loopback-only address and socket dir, rewritten at each start (the
        directory may have moved, the port been taken since)."""
        sock = str(self.socket_dir).replace("'", "''")
        conf = self.data / "ctr-server.conf"
        conf.write_text(
            f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{sock}'\n"
        )
        self._give_to_owner(conf)

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _is_our_postmaster(self, pid: int) -> bool:
        """Whether `pid` is a postgres serving this data dir (not a reused PID)."""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        name = os.path.basename(argv[0].decode(errors="replace"))
        return name in ("postgres", "postmaster") and str(self.data).encode() in argv

    def _clear_leftovers(self) -> None:
        """What a killed earlier start left: a postgres still running (stopped here;
        the caller holds the directory's lock, so no live `ctr server` uses it), or
        a postmaster.pid whose process is gone (removed, as are stale socket files)."""
        pid = self._postmaster_pid()
        if pid is not None and self._is_our_postmaster(pid):
            self.log(f"stopping the PostgreSQL an earlier start left running (pid {pid})")
            self._pg_stop()
        elif (self.data / "postmaster.pid").exists():
            self.log(f"removing the stale postmaster.pid of an earlier start (pid {pid})")
            (self.data / "postmaster.pid").unlink()
        for leftover in self.socket_dir.glob(".s.PGSQL.*"):
            leftover.unlink(missing_ok=True)

    def _create_database(self, password: str) -> None:
        import psycopg

        try:
            with psycopg.connect(
                host=str(self.socket_dir),
                port=self.port,
                user=DB_USER,
                password=password,
                dbname="postgres",
                autocommit=True,
                connect_timeout=10,
            ) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)
                ).fetchone()
                if not exists:
                    conn.execute(f'CREATE DATABASE "{DB_NAME}"')
        except psycopg.Error as exc:
            raise PostgresError(
                f"cannot create the database {DB_NAME!r} in {self.data}: {exc}"
            ) from None

    # ----------------------------------------------------------------- start/stop
    def start(self) -> str:
        """Initialise (first time), start, create the database; return MLflow's URI."""
        existing = (self.data / "PG_VERSION").read_text().strip() if self.initialised else None
        self._bindir = find_server_bindir(existing)
        self._prepare_dirs()
        if not self.initialised:
            self._initdb()
        elif not self.password_file.is_file():
            raise PostgresError(
                f"{self.password_file} is missing, so the cluster in {self.data} cannot be "
                "reached; restore the file, or remove the directory to start a new cluster"
            )
        password = self.password_file.read_text().strip()
        self._clear_leftovers()
        self.port = free_loopback_port()
        socket_path = self.socket_dir / f".s.PGSQL.{self.port}"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            raise PostgresError(
                f"the socket path {socket_path} is longer than {_MAX_SOCKET_PATH} characters, "
                "the limit of a unix socket; pick a shorter --dir"
            )
        self._write_settings(self.port)
        self.log(f"starting PostgreSQL on 127.0.0.1:{self.port} (log: {self.logfile})")
        self._run(
            [
                self._bin("pg_ctl"),
                "start",
                "-D",
                str(self.data),
                "-l",
                str(self.logfile),
                "-w",
                "-t",
                "60",
                "-s",
            ],
            "start",
        )
        self._create_database(password)
        return (
            f"postgresql+psycopg://{DB_USER}:{quote(password, safe='')}@/{DB_NAME}"
            f"?host={quote(str(self.socket_dir), safe='/')}&port={self.port}"
        )

    def _pg_stop(self) -> None:
        stop = [self._bin("pg_ctl"), "stop", "-D", str(self.data), "-w", "-t", "60", "-s"]
        if self._run([*stop, "-m", "fast"], "stop", check=False).returncode != 0:
            self._run([*stop, "-m", "immediate"], "stop", check=False)

    def stop(self) -> None:
        """pg_ctl stop -m fast (immediate if that fails) when a postgres of ours runs."""
        if self._bindir is None:
            return
        pid = self._postmaster_pid()
        if pid is not None and self._is_our_postmaster(pid):
            self._pg_stop()
