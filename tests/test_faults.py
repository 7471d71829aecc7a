"""Faults injected into a real (tiny) pipeline: a full disk in each stage, and each file a stage reads
truncated, emptied, overwritten or with its header garbled. Every fault must end in one line naming the
file and the fix, exit 1, and the previous outputs untouched; never a traceback.

The pipeline runs its seven stages once, untracked (``mlflow.required: false`` and a tracking URI
nobody listens on): the file-size limit that stands in for a full disk applies to every file the
process writes, so a SQLite store would fail first and hide the stage's own outputs."""

from __future__ import annotations

import hashlib
import resource
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from archives import sha256
from conftest import free_port, run_stage, tally, write_tiny_params

from cvae_pipeline import paths

pytestmark = pytest.mark.slow

STAGES = ("download", "prepare", "fid_reference", "train", "prior", "refine", "sample", "evaluate")
OUTPUT_ROOTS = ("data", "models", "reports")


@pytest.fixture(scope="module")
def untracked():
    """The environment of an untracked stage: nothing listens at the URI, and no retries."""
    return {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, untracked) -> Path:
    """A workspace in which all eight stages ran once: every output a fault test may damage."""
    root = tmp_path_factory.mktemp("faults")
    ws = root / "ws"
    ws.mkdir()
    # fp32: the damaged-checkpoint test re-trains and compares model.pt bit for bit
    write_tiny_params(ws, root, "fp32", mlflow={"required": False})
    for stage in STAGES:
        result = run_stage(stage, ws, env=untracked)
        assert result.returncode == 0, f"{stage}:\n{result.stdout}\n{result.stderr}"
    return ws


def snapshot(ws: Path) -> dict[str, str]:
    """sha256 of every output file (temporary siblings included, so a leftover shows as a change)."""
    return {
        str(f.relative_to(ws)): hashlib.sha256(f.read_bytes()).hexdigest()
        for root in OUTPUT_ROOTS
        for f in sorted((ws / root).rglob("*"))
        if f.is_file()
    }


def one_line(result) -> str:
    """The error line a failed stage ends with (progress bars may precede it; a traceback may not)."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
    return errors[0]


# --- a full disk ------------------------------------------------------------------------------------

FILE_SIZE_LIMIT = 512  # bytes: smaller than the first output any stage writes (a 32x32 JPEG, an array)


def file_size_limit():
    """In the stage process: writes past the limit fail with EFBIG (SIGXFSZ ignored, as a shell's
    `ulimit -f` user would see it end in an error rather than a signal)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


@pytest.mark.parametrize("stage", STAGES)
def test_a_full_disk_is_one_line_naming_the_output_and_keeps_the_previous_one(pipeline, untracked, stage):
    before = snapshot(pipeline)
    result = run_stage(stage, pipeline, env=untracked, preexec_fn=file_size_limit)
    line = one_line(result)
    tally("full disk (file-size limit) per stage", "one-line error, outputs intact")
    assert "could not be written (file too large for the file-size limit, EFBIG)" in line or (
        "could not be written (the write stopped short: disk full or a file-size limit)" in line
    ), line
    named = line.removeprefix("error: ").split(":")[0]
    assert paths.producer(named) == stage, f"{stage}'s error names {named}"
    assert snapshot(pipeline) == before, "a failed write changed or left behind an output"


# --- rotten files -------------------------------------------------------------------------------------


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "random":
        path.write_bytes(np.random.default_rng(len(data)).bytes(len(data)))
    elif how == "header":  # the format's magic and first fields
        path.write_bytes(bytes(64) + data[64:])


DAMAGES = ("truncated", "empty", "random", "header")


def loaders(ws: Path) -> dict[Path, callable]:
    """Each file a stage reads, and how that stage reads it."""
    from cvae_pipeline.data.prepared import load_prepared
    from cvae_pipeline.metrics.class_consistency import LinearProbe
    from cvae_pipeline.metrics.fid import Statistics
    from cvae_pipeline.metrics.reference import FEATURES_FILE, PROBE_FILE, STATS_FILE, FeatureSet
    from cvae_pipeline.models.artifact import load_trained_model
    from cvae_pipeline.prior import load_prior
    from cvae_pipeline.refinement.artifact import load_decoding_model
    from cvae_pipeline.samples import SampleSet

    def prepared(split):
        return lambda: np.asarray(load_prepared(paths.PREPARED_DIR, split).images[:1])

    reference = paths.FID_REFERENCE_DIR
    return {
        paths.PREPARED_DIR / "train_images.npy": prepared("train"),
        paths.PREPARED_DIR / "train_labels.npy": prepared("train"),
        paths.PREPARED_DIR / "classes.json": prepared("test"),
        reference / FEATURES_FILE: lambda: FeatureSet.load(reference / FEATURES_FILE),
        reference / STATS_FILE: lambda: Statistics.load(reference / STATS_FILE),
        reference / PROBE_FILE: lambda: LinearProbe.load(reference / PROBE_FILE),
        paths.MODEL_FILE: lambda: load_trained_model(paths.MODEL_FILE),
        paths.PRIOR_FILE: lambda: load_prior(paths.PRIOR_FILE),
        paths.REFINED_MODEL_FILE: load_decoding_model,
        paths.SAMPLES_DIR / "images.npy": lambda: SampleSet.load(paths.SAMPLES_DIR),
        paths.SAMPLES_DIR / "labels.npy": lambda: SampleSet.load(paths.SAMPLES_DIR),
        paths.SAMPLES_DIR / "classes.json": lambda: SampleSet.load(paths.SAMPLES_DIR),
        paths.SAMPLE_FEATURES: lambda: FeatureSet.load(paths.SAMPLE_FEATURES),
    }


@pytest.fixture
def restored(pipeline):
    """The workspace as cwd; every output put back as it was after the test damaged it."""
    import os

    saved = pipeline.parent / "saved"
    if not saved.exists():
        for root in OUTPUT_ROOTS:
            shutil.copytree(pipeline / root, saved / root)
    cwd = os.getcwd()
    os.chdir(pipeline)
    try:
        yield pipeline
    finally:
        os.chdir(cwd)
        for root in OUTPUT_ROOTS:
            shutil.rmtree(pipeline / root)
            shutil.copytree(saved / root, pipeline / root)


def test_every_damaged_file_is_named_with_the_stage_that_re_creates_it(restored):
    from cvae_pipeline.errors import PipelineError

    for relative, load in loaders(restored).items():
        load()  # intact, it loads
        original = (restored / relative).read_bytes()
        for how in DAMAGES:
            damage(restored / relative, how)
            with pytest.raises(PipelineError) as caught:
                load()
            message = str(caught.value)
            assert message.startswith(str(relative)) and "\n" not in message, (relative, how, message)
            assert f"`dvc repro -f {paths.producer(relative)}`" in message, (relative, how, message)
            tally("rotten files (loaders)", "one-line error naming file and stage")
            (restored / relative).write_bytes(original)


@pytest.mark.parametrize(
    ("relative", "reader", "how"),
    [
        (paths.PREPARED_DIR / "train_images.npy", "train", "truncated"),
        (paths.PREPARED_DIR / "test_labels.npy", "fid_reference", "random"),
        (paths.MODEL_FILE, "prior", "header"),
        (paths.PRIOR_FILE, "sample", "truncated"),
        (paths.REFINED_MODEL_FILE, "sample", "header"),
        (paths.FID_REFERENCE_DIR / "stats.npz", "evaluate", "random"),
        (paths.SAMPLES_DIR / "images.npy", "evaluate", "empty"),
    ],
)
def test_a_stage_reading_a_damaged_file_says_so_in_one_line(restored, untracked, relative, reader, how):
    damage(restored / relative, how)
    before = snapshot(restored)
    line = one_line(run_stage(reader, restored, env=untracked))
    assert line.startswith(f"error: {relative}: damaged") and f"dvc repro -f {paths.producer(relative)}" in line
    assert snapshot(restored) == before
    tally("rotten files (stages)", "one-line error naming file and stage")


def test_a_damaged_raw_image_names_itself_and_the_download_stage(restored, untracked):
    image = next((restored / paths.RAW_DIR).rglob("*.jpg"))
    damage(image, "random")
    line = one_line(run_stage("prepare", restored, env=untracked))
    assert line.startswith(f"error: {image.relative_to(restored)}: cannot decode image") and "download" in line
    tally("rotten files (stages)", "one-line error naming file and stage")


def test_a_damaged_checkpoint_is_set_aside_and_training_reaches_the_same_model(restored, untracked):
    """The resume file is a cache: damaged (where an interrupted run left it), it is named in a warning and
    training starts over, to the very same weights (training is deterministic for its seed)."""
    model_before = sha256(restored / paths.MODEL_FILE)
    checkpoint = restored / paths.CHECKPOINT
    assert not checkpoint.exists()  # the completed training left none
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_bytes((restored / paths.MODEL_FILE).read_bytes())  # a torch file, then damaged
    damage(checkpoint, "truncated")
    result = run_stage("train", restored, env=untracked)
    assert result.returncode == 0, result.stderr
    assert f"warning: ignoring unreadable checkpoint {paths.CHECKPOINT}" in result.stdout
    assert sha256(restored / paths.MODEL_FILE) == model_before and not checkpoint.exists()
    tally("rotten files (stages)", "resume file set aside, same model")
