"""A team's tracking stack on loopback, real and self-contained (``make team-up`` / ``make team-down``):

- :mod:`.processes` — free ports, starting a server process in its own session, waiting for it, stopping it;
- :mod:`.postgres` — a PostgreSQL cluster (MLflow's runs, registry and users);
- :mod:`.objectstore` — a SeaweedFS S3 store (MLflow's artifacts and the DVC remote);
- :mod:`.objectstore_locks` — its other doors locked: security.toml's JWT keys, mutual TLS for gRPC;
- :mod:`.secret_files` — files holding secrets, 0600 before anything is written;
- :mod:`.tracking_server` — ``mlflow server`` with basic auth over the two, and its users;
- :mod:`.stack` — the three together in a state folder: up, down, the exports, the DVC remote.

The same commands, pointed at real hosts, are the deployment ``docs/scaling.md`` describes.
"""

from .stack import Stack, StackError

__all__ = ["Stack", "StackError"]
