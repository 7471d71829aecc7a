"""``mlflow server`` for a team: PostgreSQL backend, artifacts proxied to the S3 store, basic auth.

Proxied artifacts (``--artifacts-destination s3://...``) keep the S3 credentials on the server:
clients need only the tracking URI and a user's name and password. The users' database lives in
the same PostgreSQL cluster, so the whole state of the stack is the cluster plus the bucket.
"""

from __future__ import annotations

import base64
import json
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import processes
from .processes import StackError
from .secret_files import write_secret


@dataclass
class TrackingServer:
    directory: Path
    port: int
    backend_uri: str
    auth_db_uri: str
    artifacts: str  # s3://bucket/prefix
    s3_env: dict[str, str]  # MLFLOW_S3_ENDPOINT_URL and the S3 credentials, for the server only
    admin_password: str
    secret_key: str
    pid: int | None = None

    ADMIN = "admin"
    AUTH_CACHE_SECONDS = 300

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "mlflow-server.log"

    def start(self) -> int:
        auth_config = self.directory / "basic_auth.ini"
        # READ by default: every user sees every run; writing needs EDIT on the experiment, which its
        # creator holds (MANAGE) and can grant. MLflow checks a password against its hash (deliberately
        # slow: ~0.5 s on these cores) on every request unless its credential cache is on; a stage
        # makes hundreds of requests. The cache keys on an HMAC of the password under a per-process
        # key and is dropped for a user whose password or admin flag changes; a wrong password is never
        # cached and permissions are read on every request.
        write_secret(
            auth_config,
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = {self.auth_db_uri}\nadmin_username = {self.ADMIN}\n"
            f"admin_password = {self.admin_password}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            f"auth_cache_ttl_seconds = {self.AUTH_CACHE_SECONDS}\n",
        )
        command = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--app-name",
            "basic-auth",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            self.artifacts,
        ]
        env = self.s3_env | {
            "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret_key,
            # an S3 store that is down answers the upload with a 500 in about a second, instead of
            # boto3's legacy retries outlasting the client's 10 s timeout (which reads as "server unreachable")
            "AWS_RETRY_MODE": "standard",
            "AWS_MAX_ATTEMPTS": "2",
        }
        self.pid = processes.start(command, self.log, env=env, cwd=self.directory)
        processes.wait_until(self.ready, f"the MLflow server on port {self.port}", self.pid, self.log, timeout=180)
        return self.pid

    def stop(self) -> None:
        processes.stop(self.pid)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def request(
        self, path: str, body: dict | None = None, user: tuple[str, str] | None = None, method: str | None = None
    ) -> dict:
        """A REST call as ``user`` (default: the admin), GET or with a body POST unless ``method`` says
        otherwise; StackError with the server's answer on failure."""
        name, password = user or (self.ADMIN, self.admin_password)
        headers = {"Content-Type": "application/json", "Authorization": basic_auth(name, password)}
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise StackError(f"MLflow server {self.url}{path}: {exc.code} {exc.read()[:200]!r}") from None

    def ensure_user(self, name: str, password: str) -> None:
        """Create the user unless it exists (a restarted stack keeps its users and their passwords)."""
        try:
            self.request("/api/2.0/mlflow/users/get?username=" + name)
        except StackError:
            self.request("/api/2.0/mlflow/users/create", {"username": name, "password": password})


def basic_auth(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()
