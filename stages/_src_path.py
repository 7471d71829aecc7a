"""Make ``import cvae_pipeline`` load *this checkout's* ``src/``.

The editable install points at one checkout. ``dvc exp run --queue`` runs the stages in a copy
of the repository (``.dvc/tmp/exps/...``); without this, the copy would import the workspace's
``src/`` as it is when each stage starts — code edited after queueing, not the code that was
queued (and recorded in the experiment's ``dvc.lock``). The stages whose code changes with the
models (train, sample, evaluate) import this first; the data stages (download, prepare,
fid_reference) do not, so that their recorded hashes — and DVC's cache of the 20-minute
``fid_reference`` — stay valid.
"""

import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
if SRC.is_dir():
    sys.path.insert(0, str(SRC))
