"""Grading holds outside the course's CLI: plain ``nbgrader`` in a course folder made the documented way.

``python -m autograder grade`` sets one BLAS thread and passive OpenMP waits for nbgrader; the formgrader
or an instructor typing ``nbgrader autograde`` sets nothing. Here the course folder comes from
``autograder.course.build_course`` (source notebook, ``helpers/``, earlier notebooks' ``minirlhf/`` and the
shipped ``artifacts/``), and the ``nbgrader`` command runs in it with none of the course's environment
variables: only the notebook itself (``runtime.configure_for_grading()`` in its setup cell) keeps every cell
under nbgrader's 30 s. The artifact cache is moved to an empty folder, so only the shipped artifacts can serve.

Notebook 03 is graded (its grading run is the cheaper of 02 and 03, about 15 s of cells on 2 cores).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import torch

from autograder import course
from helpers import artifacts, runtime
from helpers.notebook import cell_kind, nbgrader_meta, read_notebook

NB_ID = "03_preference_data"
STUDENT = "student"
CELL_TIMEOUT = 30.0  # nbgrader's default per-cell timeout, which the course's nbgrader_config.py keeps
COURSE_VARIABLES = ("OMP_", "MKL_", "OPENBLAS_", "COURSE_", "RLHF_", "NBGRADER_", "GPT2_", "PYTEST_", "MPLBACKEND")


def plain_env(cache: Path) -> dict[str, str]:
    """An instructor's shell with the course's venv activated: none of the course's variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(COURSE_VARIABLES)}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["RLHF_COURSE_CACHE"] = str(cache)  # an empty cache: grading must use the shipped artifacts
    return env


def nbgrader(crs: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "nbgrader"
    proc = subprocess.run([str(exe), *args], cwd=crs, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}"
    return proc


def cell_seconds(cell: dict) -> float | None:
    """Wall time of one executed cell, from the timestamps nbclient records in its metadata."""
    ex = cell.get("metadata", {}).get("execution", {})
    if "iopub.execute_input" not in ex or "shell.execute_reply" not in ex:
        return None
    start, end = (datetime.fromisoformat(ex[k].replace("Z", "+00:00")) for k in ("iopub.execute_input", "shell.execute_reply"))
    return (end - start).total_seconds()


def autograde(crs: Path, env: dict[str, str]) -> tuple[course.NotebookScore, dict]:
    nbgrader(crs, env, "autograde", NB_ID, "--create", "--force")
    (score,) = course.read_scores(crs, NB_ID, STUDENT)
    graded = json.loads((crs / "autograded" / STUDENT / NB_ID / f"{NB_ID}.ipynb").read_text(encoding="utf-8"))
    return score, graded


@pytest.fixture(scope="module")
def plain_course(tmp_path_factory):
    """The documented course folder, its assignment generated and the source solution submitted, graded once."""
    root = tmp_path_factory.mktemp("plain_nbgrader")
    crs = course.build_course(root / "course", [NB_ID])
    env = plain_env(root / "empty_cache")
    nbgrader(crs, env, "generate_assignment", NB_ID, "--force")
    course.submit(crs, NB_ID, STUDENT, crs / "source" / NB_ID / f"{NB_ID}.ipynb")
    score, graded = autograde(crs, env)
    return crs, env, score, graded


def test_the_source_solution_gets_full_marks(plain_course):
    _, _, score, graded = plain_course
    source = read_notebook(course.check_assignment(NB_ID))
    points = sum(nbgrader_meta(c)["points"] for c in source["cells"] if cell_kind(c) == "test")
    assert score.max_score == points > 0
    lost = [(c.grade_id, c.score, c.max_score) for c in score.cells if c.score != c.max_score]
    assert score.score == score.max_score, f"cells that lost points under plain nbgrader: {lost}"
    failed = [i for i, c in enumerate(graded["cells"]) if c["cell_type"] == "code"
              and any(o.get("output_type") == "error" or o.get("name") == "stderr" for o in c.get("outputs", []))]
    assert not failed, f"cells with an error or stderr output: {failed}"


def test_every_cell_finishes_well_within_nbgraders_timeout(plain_course):
    _, _, _, graded = plain_course
    times = [(cell_seconds(c), i, nbgrader_meta(c).get("grade_id", "")) for i, c in enumerate(graded["cells"])
             if c["cell_type"] == "code"]
    assert all(t is not None for t, _, _ in times), "nbclient's timing metadata is missing"
    slowest = max(times)
    graded_cells = [x for x in times if x[2].startswith("test_")]
    print(f"slowest cell {slowest[0]:.2f} s (cell {slowest[1]}); slowest graded cell {max(graded_cells)[0]:.2f} s "
          f"({max(graded_cells)[2]})")
    # Half the budget: a busier grading machine must still fit.
    assert slowest[0] < CELL_TIMEOUT / 2, f"cell {slowest[1]} ran {slowest[0]:.1f} s under plain nbgrader autograde"


def test_a_missing_artifact_fails_at_once_naming_the_command_that_ships_it(plain_course):
    crs, env, _, _ = plain_course
    shutil.rmtree(crs / "source" / NB_ID / "artifacts")  # an instructor who forgot to ship them
    score, graded = autograde(crs, env)
    errors = [(i, c) for i, c in enumerate(graded["cells"]) if c["cell_type"] == "code"
              and any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert errors, "grading without the shipped artifacts must fail"
    index, first = errors[0]
    (error,) = [o for o in first["outputs"] if o.get("output_type") == "error"]
    assert error["ename"] == "ArtifactError" and "sft_model" in error["evalue"], error["evalue"][:500]
    assert artifacts.SHIP_COMMAND in error["evalue"], error["evalue"][:500]
    assert cell_seconds(first) < 10.0, f"the setup cell took {cell_seconds(first):.1f} s to fail: was a model built?"
    # The graded cells never need an artifact: only the demos fail, and the points stay.
    assert score.score == score.max_score, [(c.grade_id, c.score) for c in score.cells if c.score != c.max_score]
    total = sum(cell_seconds(c) or 0.0 for c in graded["cells"] if c["cell_type"] == "code")
    assert total < 60.0, f"the notebook's cells took {total:.0f} s in all without artifacts"
    assert not (Path(env["RLHF_COURSE_CACHE"]) / "artifacts").exists() or not any(
        (Path(env["RLHF_COURSE_CACHE"]) / "artifacts").iterdir()), "a graded run wrote into the artifact cache"


# ----------------------------------------------------------------------------- the switch itself, in-process


@pytest.fixture
def restore_switches():
    threads = torch.get_num_threads()
    allowed = artifacts.allow_builds(True)
    yield
    torch.set_num_threads(threads)
    artifacts.allow_builds(allowed)


def test_configure_for_grading_outside_grading_changes_nothing(monkeypatch, restore_switches):
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    torch.set_num_threads(2)
    assert runtime.configure_for_grading() is False
    assert torch.get_num_threads() == 2 and artifacts.allow_builds(True) is True


def test_configure_for_grading_under_nbgrader_sets_threads_and_forbids_builds(monkeypatch, tmp_path, restore_switches):
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    monkeypatch.setenv("RLHF_COURSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RLHF_ARTIFACTS", raising=False)
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(2)
    assert runtime.configure_for_grading() is True
    assert torch.get_num_threads() == runtime.GRADING_THREADS == 1
    built = []
    dep = tmp_path / "toy_dep.py"
    dep.write_text("x = 1\n")
    artifacts.register("plain_toy", lambda out, **cfg: built.append(cfg), lambda path, **cfg: cfg, depends_on=[str(dep)])
    try:
        with pytest.raises(artifacts.ArtifactError) as err:
            artifacts.get("plain_toy")
        assert built == [], "a graded run must never build"
        message = str(err.value)
        assert "'plain_toy'" in message and artifacts.SHIP_COMMAND in message and "source/<id>/" in message
        assert artifacts.locate("plain_toy", build=False) is None  # looking is still allowed
        assert artifacts.allow_builds(True) is False  # and the instructor's tools can build again
        assert artifacts.get("plain_toy") == {} and len(built) == 1
    finally:
        artifacts._REGISTRY.pop("plain_toy", None)
    with pytest.raises(ValueError):
        runtime.configure_for_grading(0)
