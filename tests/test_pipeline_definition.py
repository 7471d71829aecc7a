"""``dvc.yaml`` against the code: each stage depends on exactly the modules it computes with
(docs/experiments.md, "What re-runs"), names the paths ``paths.py`` names, and runs its own checkout's
``src/``."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, clean_env

from cvae_pipeline import paths

SRC = REPO / "src"
PACKAGE = SRC / "cvae_pipeline"
#: modules no stage computes its outputs with: what goes to MLflow (tracking, the logged generator), the
#: wording of failures, the turns queued stages take at the cores, and what only the `cvae` command runs.
#: Editing them re-runs nothing.
NOT_COMPUTING = (
    "cvae_pipeline.tracking",
    "cvae_pipeline.serving",
    "cvae_pipeline.mlflow_model",
    "cvae_pipeline.errors",
    "cvae_pipeline.stage",
    "cvae_pipeline.turns",
    "cvae_pipeline.cli",
    "cvae_pipeline.comparison",
    "cvae_pipeline.config_docs",
    "cvae_pipeline.team",
)


def computes(module: str) -> bool:
    return not any(module == name or module.startswith(name + ".") for name in NOT_COMPUTING)


def pipeline() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """The file of project module ``cvae_pipeline.x.y`` (a package's ``__init__.py``), or None."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Project modules ``path`` imports anywhere (also inside functions), resolved to dotted names."""
    tree = ast.parse(path.read_text())
    here = None
    if path.is_relative_to(SRC):
        parts = path.relative_to(SRC).with_suffix("").parts
        here = parts[:-1] if path.name != "__init__.py" else parts[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("cvae_pipeline"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                assert here is not None, path
                base = ".".join(here[: len(here) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if not module.startswith("cvae_pipeline"):
                continue
            found.add(module)
            for alias in node.names:  # `from . import build_model` or `from .. import paths`
                if module_file(f"{module}.{alias.name}") is not None:
                    found.add(f"{module}.{alias.name}")
    closed: set[str] = set()
    for name in found:  # importing a.b.c runs a/__init__.py and a/b/__init__.py too
        parts = name.split(".")
        closed.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return closed


def computing_files_of(script: Path) -> set[Path]:
    """Every project source file a stage script computes with: its imports, transitively, followed
    through the modules that compute only (a tracking module's imports are the tracking's)."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        current = todo.pop()
        for name in filter(computes, imported_modules(current)):
            file = module_file(name)
            if file is not None and file not in seen:
                seen.add(file)
                todo.append(file)
    return seen


def covered(file: Path, deps: list[str]) -> bool:
    relative = file.relative_to(REPO).as_posix()
    return any(relative == dep or relative.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("stage", list(pipeline()))
def test_each_stage_depends_on_exactly_the_code_it_computes_with(stage: str):
    """An edit to any module a stage computes with re-runs it (its deps list the module or its folder),
    and an edit to anything else does not: every source dep holds a module the stage computes with,
    and none is a module that only tracks, logs or words errors."""
    spec = pipeline()[stage]
    deps = [d if isinstance(d, str) else next(iter(d)) for d in spec["deps"]]
    script = REPO / "stages" / f"{stage}.py"
    assert f"stages/{stage}.py" in deps
    computing = computing_files_of(script)
    missing = sorted(f.relative_to(REPO).as_posix() for f in computing if not covered(f, deps))
    assert not missing, f"dvc.yaml stage {stage} computes with code it does not depend on: {missing}"
    for dep in (d for d in deps if d.startswith("src/")):
        assert any(covered(f, [dep]) for f in computing), f"dvc.yaml stage {stage}: {dep} is not computed with"
        held = [SRC.parent / dep] if dep.endswith(".py") else sorted((SRC.parent / dep).rglob("*.py"))
        names = {".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__") for p in held}
        assert all(map(computes, names)), f"dvc.yaml stage {stage}: {dep} holds code that does not compute"


def test_no_stage_depends_on_a_run_file():
    """A run id is a hand-off, not an input: a new one must not re-run what follows."""
    run_files = {
        p.as_posix()
        for p in (paths.TRAIN_RUN_FILE, paths.PRIOR_RUN_FILE, paths.REFINE_RUN_FILE, paths.SAMPLES_RUN_FILE)
    }
    for stage, spec in pipeline().items():
        deps = {d if isinstance(d, str) else next(iter(d)) for d in spec["deps"]}
        assert not deps & run_files, f"dvc.yaml stage {stage} depends on {sorted(deps & run_files)}"


def test_stage_outputs_are_the_paths_module_paths():
    """dvc.yaml and paths.py name the same outputs: a path changed in one place only is caught."""
    outs = set()
    for spec in pipeline().values():
        for kind in ("outs", "metrics", "plots"):
            for entry in spec.get(kind, []):
                outs.add(entry if isinstance(entry, str) else next(iter(entry)))
    named = {value.as_posix() for value in vars(paths).values() if isinstance(value, Path)}
    # every output is a path of paths.py, and every path of paths.py that is an output is listed
    assert outs <= named, f"outputs not in paths.py: {sorted(outs - named)}"


def test_every_stage_runs_its_own_checkouts_code(tmp_path: Path):
    """A queued experiment runs in a copy of the repository: each stage command must import that copy's
    ``src/``, not the editable install's (the workspace as it is when the stage starts)."""
    copy = tmp_path / "copy"
    shutil.copytree(REPO / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(REPO / "stages", copy / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    marker = copy / "src" / "cvae_pipeline" / "__init__.py"
    marker.write_text(marker.read_text() + '\nimport sys\nprint("loaded the copy", file=sys.stderr)\n')
    env = clean_env(PATH=f"{Path(os.sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for stage, spec in pipeline().items():
        result = subprocess.run(
            f"{spec['cmd']} --help", shell=True, cwd=copy, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        assert "loaded the copy" in result.stderr, f"stage {stage} ran the editable install's code: {spec['cmd']}"


def test_each_output_names_the_stage_that_writes_it():
    """paths.producer, which error messages use to say what re-creates a damaged file, agrees with dvc.yaml."""
    for stage, spec in pipeline().items():
        for kind in ("outs", "metrics", "plots"):
            for entry in spec.get(kind, []):
                out = entry if isinstance(entry, str) else next(iter(entry))
                assert paths.producer(out) == stage, (
                    f"{out}: dvc.yaml says {stage}, paths.producer {paths.producer(out)}"
                )


def test_the_committed_lock_records_params_yaml_as_it_is():
    """main's ``dvc.lock`` is a real ``dvc repro`` of its ``params.yaml``: every param a stage lists is recorded
    with the file's value. Without this a changed default left the lock (and ``dvc exp show``'s baseline row)
    describing a configuration the README no longer ships; re-run the stage and commit its lock and reports."""
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for stage, definition in pipeline().items():
        assert stage in lock, f"dvc.lock has no {stage} stage: run `dvc repro` and commit dvc.lock"
        recorded = lock[stage].get("params", {}).get("params.yaml", {})
        assert sorted(recorded) == sorted(definition.get("params", [])), f"{stage}: lock and dvc.yaml list other params"
        for key, value in recorded.items():
            current = params
            for part in key.split("."):
                current = current[part]
            assert current == value, f"dvc.lock's {stage} ran with other {key}: `dvc repro {stage}` and commit"
