"""The team stack in one state folder: ``up`` starts PostgreSQL, the S3 store and the MLflow server
on loopback (initialising them the first time), ``down`` stops exactly those processes.

The folder holds everything: the cluster, the store's data, the server's log and auth config,
``stack.json`` (ports, process ids and the generated secrets; mode 0600) and ``env.sh`` (the
writer's exports). A second ``up`` on the same folder restarts the same runs, objects and users.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import sys
from pathlib import Path

from . import processes
from .objectstore import REGION, SERVICES, ObjectStore
from .objectstore_locks import JWT_SECTIONS
from .postgres import Postgres
from .processes import StackError
from .secret_files import write_secret
from .tracking_server import TrackingServer

BUCKET = "cvae-team"
ARTIFACTS_PREFIX = "mlflow"
DVC_PREFIX = "dvc"
DVC_REMOTE = "team"
DATABASES = ("mlflow", "mlflow_auth")
#: the users ``up`` creates besides the admin: one who runs the pipeline, one who only looks
WRITER, READER = "writer", "reader"
SECRETS = ("postgres", "s3_access_key", "s3_secret_key", "admin", WRITER, READER, "flask", *JWT_SECTIONS.values())


class Stack:
    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory).resolve()
        self.state_file = self.directory / "stack.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}

    # -- the parts -----------------------------------------------------------------------------
    @property
    def secrets(self) -> dict[str, str]:
        return self.state["secrets"]

    @property
    def postgres(self) -> Postgres:
        return Postgres(self.directory / "postgres", self.state["ports"]["postgres"], self.secrets["postgres"])

    @property
    def objectstore(self) -> ObjectStore:
        ports = {name: self.state["ports"][f"s3_{name}"] for name in SERVICES}
        store = ObjectStore(
            self.directory / "seaweedfs",
            ports,
            self.secrets["s3_access_key"],
            self.secrets["s3_secret_key"],
            BUCKET,
            signing_keys={name: self.secrets[name] for name in JWT_SECTIONS.values()},
        )
        store.pid = self.state.get("pids", {}).get("seaweedfs")
        return store

    @property
    def server(self) -> TrackingServer:
        pg = self.postgres
        server = TrackingServer(
            self.directory,
            self.state["ports"]["mlflow"],
            backend_uri=pg.uri(DATABASES[0]),
            auth_db_uri=pg.uri(DATABASES[1]),
            artifacts=f"s3://{BUCKET}/{ARTIFACTS_PREFIX}",
            s3_env=self.s3_env(),
            admin_password=self.secrets["admin"],
            secret_key=self.secrets["flask"],
        )
        server.pid = self.state.get("pids", {}).get("mlflow")
        return server

    def s3_env(self) -> dict[str, str]:
        """What a process that talks to the bucket itself needs (the server; ``mlflow gc``; boto3)."""
        return {
            "MLFLOW_S3_ENDPOINT_URL": self.objectstore.endpoint,
            "AWS_ACCESS_KEY_ID": self.secrets["s3_access_key"],
            "AWS_SECRET_ACCESS_KEY": self.secrets["s3_secret_key"],
            "AWS_DEFAULT_REGION": REGION,
        }

    def exports(self, user: str = WRITER) -> dict[str, str]:
        """What a pipeline user exports: the server and a user's credentials (artifacts are proxied)."""
        return {
            "MLFLOW_TRACKING_URI": self.server.url,
            "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": self.secrets[user],
        }

    def credentials(self, user: str) -> tuple[str, str]:
        return user, self.secrets[user]

    # -- up and down ---------------------------------------------------------------------------
    def running(self) -> bool:
        pids = self.state.get("pids", {})
        return bool(pids) and all(processes.alive(pid) for pid in pids.values()) and self.postgres.running()

    def up(self) -> None:
        """Start what is not running. A folder whose stack is partly up (one service crashed, or was
        stopped) keeps its ports, so the URLs already exported stay valid; otherwise fresh ports."""
        if self.state and self.running():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        # the owner's alone; as root, others may pass through (not list) so that the postgres user
        # reaches its cluster inside, and every file in it is 0600 or a 0700 folder
        self.directory.chmod(0o711 if os.geteuid() == 0 else 0o700)
        generated = self.state.setdefault("secrets", {})
        for name in SECRETS:  # a stack made by an older version gains the secrets it lacks
            generated.setdefault(name, secrets.token_urlsafe(32))  # 32 bytes: a full HS256 key
        pids = self.state.setdefault("pids", {})
        partly_up = "ports" in self.state and (
            any(processes.alive(pid) for pid in pids.values()) or self.postgres.running()
        )
        if not partly_up:
            names = ["postgres", "mlflow"]
            ports = processes.free_ports(len(names) + len(SERVICES), with_grpc=True)
            self.state["ports"] = dict(zip(names + [f"s3_{s}" for s in SERVICES], ports))
            pids.clear()
        self._save()
        try:
            pg = self.postgres
            pg.initialise()
            if not pg.running():
                pg.start()
            for database in DATABASES:
                pg.create_database(database)
            if not processes.alive(pids.get("seaweedfs")):
                pids["seaweedfs"] = self.objectstore.start()
                self._save()
            server = self.server
            if not processes.alive(pids.get("mlflow")):
                pids["mlflow"] = server.start()
                self._save()
            for user in (WRITER, READER):
                server.ensure_user(user, self.secrets[user])
        except BaseException:
            self.down()
            raise
        self._write_env()

    def down(self) -> None:
        """Stop the server, the store and the cluster this folder's ``up`` started; keep their data."""
        if not self.state:
            return
        pids = self.state.get("pids", {})
        processes.stop(pids.get("mlflow"), pids.get("seaweedfs"))
        self.postgres.stop()  # after the server: it holds connections to the cluster
        self.state["pids"] = {}
        self._save()

    def _save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.state_file.with_suffix(".tmp")
        write_secret(temporary, json.dumps(self.state, indent=2))
        temporary.replace(self.state_file)

    def _write_env(self) -> None:
        path = self.directory / "env.sh"
        write_secret(path, "".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.exports().items()))

    # -- DVC -----------------------------------------------------------------------------------
    def configure_dvc_remote(self, repo: str | os.PathLike) -> str:
        """Make the bucket the default DVC remote of ``repo``, in ``.dvc/config.local`` only (the
        endpoint and keys are this machine's, never committed)."""
        dvc = str(Path(sys.executable).parent / "dvc")
        url = f"s3://{BUCKET}/{DVC_PREFIX}"
        settings = {
            "endpointurl": self.objectstore.endpoint,
            "access_key_id": self.secrets["s3_access_key"],
            "secret_access_key": self.secrets["s3_secret_key"],
            "region": REGION,
        }
        commands = [[dvc, "remote", "add", "--local", "--force", "--default", DVC_REMOTE, url]]
        # "--": a random key may begin with "-" and must not be read as an option
        commands += [[dvc, "remote", "modify", "--local", "--", DVC_REMOTE, k, v] for k, v in settings.items()]
        for command in commands:
            result = subprocess.run(command, cwd=repo, capture_output=True, text=True)
            if result.returncode != 0:
                raise StackError(f"configuring the DVC remote in {repo} failed: {result.stderr.strip()}")
        return url

    def describe(self) -> str:
        ports = self.state["ports"]
        lines = [
            f"team stack up in {self.directory}",
            f"  PostgreSQL  127.0.0.1:{ports['postgres']} (databases {', '.join(DATABASES)})",
            f"  S3 store    {self.objectstore.endpoint} (SeaweedFS), bucket {BUCKET}; its other ports locked",
            f"  MLflow      {self.server.url} (basic auth: users admin, {WRITER}, {READER}; "
            f"artifacts in s3://{BUCKET}/{ARTIFACTS_PREFIX})",
            f"  passwords and keys in {self.state_file}",
            "",
            f"export these (or `source {self.directory / 'env.sh'}`) to run the pipeline as '{WRITER}':",
            *(f"export {k}={shlex.quote(v)}" for k, v in self.exports().items()),
        ]
        return "\n".join(lines)


__all__ = ["Stack", "StackError"]
