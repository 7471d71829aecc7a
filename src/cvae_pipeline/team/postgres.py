"""A PostgreSQL cluster on loopback: MLflow's backend store (runs, registry) and its users' database.

``initdb`` refuses to run as root, so as root the cluster belongs to the ``postgres`` user (Debian's
package creates it) and its commands run through ``runuser``. Password authentication
(scram-sha-256) even on loopback: the URI the server gets is the one a real deployment uses.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from .processes import StackError, tail
from .secret_files import write_secret

SUPERUSER = "mlflow"


def binaries() -> Path:
    """The directory of ``initdb``/``pg_ctl``: on PATH, else Debian's ``/usr/lib/postgresql/<major>/bin``."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent  # Debian links some into /usr/local/bin
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise StackError(
            "PostgreSQL is not installed (no pg_ctl on PATH or in /usr/lib/postgresql); "
            "install it with `apt-get install -y postgresql` and re-run"
        )
    return Path(found[-1]).parent


def as_cluster_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@dataclass
class Postgres:
    directory: Path  # the cluster's data directory (and its socket directory)
    port: int
    password: str

    @property
    def log(self) -> Path:
        return self.directory.parent / "postgres.log"

    def uri(self, database: str) -> str:
        """The SQLAlchemy URI MLflow takes. Plain ``postgresql://`` means psycopg 3 to MLflow 3 on
        SQLAlchemy 2, hence ``psycopg[binary]`` in the project's dependencies."""
        return f"postgresql://{SUPERUSER}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{database}"

    def _run(self, command: list[str], what: str) -> None:
        result = subprocess.run(as_cluster_owner(command), capture_output=True, text=True)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise StackError(f"PostgreSQL {what} failed: {detail[-1] if detail else result.returncode}; see {self.log}")

    def initialise(self) -> None:
        """``initdb`` once; a folder that already holds a cluster is kept (its runs survive a restart)."""
        if (self.directory / "PG_VERSION").is_file():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        password_file = self.directory.parent / ".pgpass-init"
        write_secret(password_file, self.password + "\n")
        if os.geteuid() == 0:
            for path in (self.directory, password_file):
                shutil.chown(path, "postgres", "postgres")
            check = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(self.directory)])
            if check.returncode != 0:
                raise StackError(
                    f"{self.directory}: the postgres user cannot reach it (a parent folder is private); "
                    "name a state folder under a world-traversable path, e.g. TEAM_DIR=/srv/cvae-team"
                )
        try:
            self._run(
                [
                    str(binaries() / "initdb"),
                    "-D",
                    str(self.directory),
                    "-U",
                    SUPERUSER,
                    "--auth=scram-sha-256",
                    f"--pwfile={password_file}",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                "initdb",
            )
        finally:
            password_file.unlink(missing_ok=True)

    def start(self) -> None:
        """Listen on 127.0.0.1 only, with the Unix socket inside the data folder (never /var/run)."""
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.directory}"
        if not self.log.exists():
            self.log.touch(mode=0o600)
            if os.geteuid() == 0:
                shutil.chown(self.log, "postgres", "postgres")
        self.log.chmod(0o600)  # failed logins are logged with the user name; a log made before was 0644
        result = subprocess.run(
            as_cluster_owner(
                [
                    str(binaries() / "pg_ctl"),
                    "-D",
                    str(self.directory),
                    "-o",
                    options,
                    "-l",
                    str(self.log),
                    "-w",
                    "start",
                ]
            ),
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise StackError(f"PostgreSQL did not start on port {self.port}; its log {self.log} ends: {tail(self.log)}")

    def stop(self) -> None:
        if not (self.directory / "postmaster.pid").is_file():
            return
        self._run([str(binaries() / "pg_ctl"), "-D", str(self.directory), "-m", "fast", "-w", "stop"], "stop")

    def running(self) -> bool:
        result = subprocess.run(
            [str(binaries() / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True
        )
        return result.returncode == 0

    def create_database(self, name: str) -> None:
        """``CREATE DATABASE`` unless it exists (through psycopg, the driver MLflow uses too)."""
        import psycopg

        with psycopg.connect(self.uri("postgres"), autocommit=True) as connection:
            exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                connection.execute(f'CREATE DATABASE "{name}"')
