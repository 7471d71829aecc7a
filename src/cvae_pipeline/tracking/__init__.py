"""MLflow tracking, one module per job:

- :mod:`.store` — where runs go (``MLFLOW_TRACKING_URI`` or the local SQLite store) and failing fast
  with one line when that store cannot be used;
- :mod:`.tags` — what a run says about where it came from (commit, DVC experiment, machine) and
  the flattened ``params.yaml``;
- :mod:`.handoff` — the run file a stage leaves for the next (``models/mlflow_run.json``, ...);
- :mod:`.runs` — which run a stage logs into (always its own: train's top-level, every later stage's
  nested under it; or none), and the epochs a resumed run lacks;
- :mod:`.orphans` — runs whose stage process died (``kill -9``), marked KILLED by the next stage;
- :mod:`.registry` — the Model Registry version of a generator: registered by ``sample``, scored by ``evaluate``;
- :mod:`.stage_logging` — what ``sample`` and ``evaluate`` log, so the stage scripts stay thin.
"""

from . import runs
from .handoff import read_run_file, write_run_file
from .runs import backfill_epochs, stage_run
from .store import TrackingError, configure, configure_store, project_root, tracking_uri
from .tags import flatten_params, run_tags

__all__ = [
    "TrackingError",
    "backfill_epochs",
    "runs",
    "configure",
    "configure_store",
    "flatten_params",
    "project_root",
    "read_run_file",
    "stage_run",
    "run_tags",
    "tracking_uri",
    "write_run_file",
]
