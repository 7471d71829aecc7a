"""Where every stage reads and writes, relative to the workspace (the repository root, or the copy
``dvc exp run --queue`` runs in). ``dvc.yaml`` names the same paths as deps and outs; a test keeps
the two in step, so a path is changed here and in ``dvc.yaml`` together, nowhere else."""

from __future__ import annotations

from pathlib import Path

RAW_DIR = Path("data/raw")
SOURCE_RECORD = RAW_DIR / ".source.json"  # which of data.sources was used, pinned by which checksum
PREPARED_DIR = Path("data/prepared")
DATA_FACTS = Path("reports/data.json")

FID_REFERENCE_DIR = Path("data/fid_reference")

MODEL_FILE = Path("models/model.pt")
# the resume file: deliberately no DVC output (see dvc.yaml)
CHECKPOINT = Path("models/checkpoints/last.pt")
# the MLflow run the model was trained in, kept in git so an applied experiment's later stages log beside it
TRAIN_RUN_FILE = Path("models/mlflow_run.json")
TRAIN_REPORTS = Path("reports/train")
TRAIN_HISTORY = TRAIN_REPORTS / "history.csv"
TRAIN_GRID = TRAIN_REPORTS / "samples.png"
TRAIN_METRICS = TRAIN_REPORTS / "metrics.json"

PRIOR_FILE = Path("models/prior.pt")
PRIOR_CHECKPOINT = Path("models/checkpoints/prior_last.pt")  # the prior's resume file, no DVC output either
# the run the prior logged to (the training's, or one nested under it): sample logs beside it
PRIOR_RUN_FILE = Path("models/prior_run.json")
PRIOR_REPORTS = Path("reports/prior")
PRIOR_HISTORY = PRIOR_REPORTS / "history.csv"
PRIOR_GRID = PRIOR_REPORTS / "samples.png"
PRIOR_METRICS = PRIOR_REPORTS / "metrics.json"

# the model sample and evaluate decode with: model.pt with its decoder refined (a byte copy when refine is off)
REFINED_MODEL_FILE = Path("models/refined.pt")
REFINE_CHECKPOINT = Path("models/checkpoints/refine_last.pt")  # the refinement's resume file, no DVC output
REFINE_RUN_FILE = Path("models/refine_run.json")
REFINE_REPORTS = Path("reports/refine")
REFINE_HISTORY = REFINE_REPORTS / "history.csv"
REFINE_GRID = REFINE_REPORTS / "reconstructions.png"
REFINE_METRICS = REFINE_REPORTS / "metrics.json"

SAMPLES_DIR = Path("data/samples")
SAMPLES_GRID = Path("reports/samples/grid.png")
# the run sample logged to (evaluate logs there too), kept in git like the other run files
SAMPLES_RUN_FILE = Path("reports/sample_run.json")

EVAL_DIR = Path("data/eval")
SAMPLE_FEATURES = EVAL_DIR / "sample_features.npz"
METRICS = Path("reports/metrics.json")
PER_CLASS_PLOT = Path("reports/per_class.csv")
# the run evaluate logged its scores to and the registered version, kept in git
EVAL_RUN_FILE = Path("reports/evaluate_run.json")

# `cvae report` / `cvae compare` (not pipeline outputs)
COMPARE_DIR = Path("reports/compare")

#: the stage that writes each output (and each resume file), for errors that say what re-creates a
#: damaged file; dvc.yaml's outs say the same (a test keeps the two in step)
PRODUCERS = {
    RAW_DIR: "download",
    PREPARED_DIR: "prepare",
    DATA_FACTS: "prepare",
    FID_REFERENCE_DIR: "fid_reference",
    MODEL_FILE: "train",
    CHECKPOINT: "train",
    TRAIN_RUN_FILE: "train",
    TRAIN_REPORTS: "train",
    PRIOR_FILE: "prior",
    PRIOR_CHECKPOINT: "prior",
    PRIOR_RUN_FILE: "prior",
    PRIOR_REPORTS: "prior",
    REFINED_MODEL_FILE: "refine",
    REFINE_CHECKPOINT: "refine",
    REFINE_RUN_FILE: "refine",
    REFINE_REPORTS: "refine",
    SAMPLES_DIR: "sample",
    SAMPLES_GRID: "sample",
    SAMPLES_RUN_FILE: "sample",
    EVAL_DIR: "evaluate",
    METRICS: "evaluate",
    PER_CLASS_PLOT: "evaluate",
    EVAL_RUN_FILE: "evaluate",
}


def producer(path: str | Path) -> str | None:
    """The stage that writes ``path`` (relative to the workspace or below any folder), or None."""
    parts = Path(path).parts
    for output, stage in sorted(PRODUCERS.items(), key=lambda item: -len(item[0].parts)):
        n = len(output.parts)
        if any(parts[i : i + n] == output.parts for i in range(len(parts) - n + 1)):
            return stage
    return None
