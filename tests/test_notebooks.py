"""The source notebooks: committed clean, well-formed for nbgrader, and runnable end to end."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from autograder import authoring, course
from autograder.demo import execute_notebook
from helpers.notebook import BEGIN_SOLUTION, cell_kind, cell_source, nbgrader_meta, read_notebook

ROOT = Path(__file__).resolve().parent.parent
IDS = course.notebook_ids()


def test_the_course_has_notebooks():
    assert "01_tokenizer_gpt2" in IDS


@pytest.mark.parametrize("nb_id", IDS)
def test_committed_without_outputs(nb_id):
    nb = read_notebook(ROOT / "notebooks" / nb_id / f"{nb_id}.ipynb")
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and (c["outputs"] or c["execution_count"])]
    assert not dirty, f"cells {dirty} carry outputs: clear them before committing"


@pytest.mark.parametrize("nb_id", IDS)
def test_nbgrader_structure(nb_id):
    nb = read_notebook(ROOT / "notebooks" / nb_id / f"{nb_id}.ipynb")
    ids = [nbgrader_meta(c)["grade_id"] for c in nb["cells"] if nbgrader_meta(c)]
    assert len(ids) == len(set(ids)), "grade ids must be unique"
    solutions = [c for c in nb["cells"] if cell_kind(c) == "solution"]
    tests = [c for c in nb["cells"] if cell_kind(c) == "test"]
    assert solutions and tests
    for cell in tests:
        assert nbgrader_meta(cell).get("points", 0) > 0
        assert "### BEGIN HIDDEN TESTS" in cell_source(cell), f"{nbgrader_meta(cell)['grade_id']} has no hidden tests"
    for cell in solutions:
        src = cell_source(cell)
        assert BEGIN_SOLUTION in src, f"{nbgrader_meta(cell)['grade_id']}: a solution cell without a solution region"
        (graded,) = [n for n in ast.parse(src).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        if isinstance(graded, ast.FunctionDef):
            args = graded.args.args + graded.args.kwonlyargs
            missing = [a.arg for a in args if a.annotation is None and a.arg not in ("self", "cls")]
            assert not missing and graded.returns is not None, f"{graded.name}: type hints missing on {missing}"
        called = any(graded.name in cell_source(t) for t in tests)
        assert called, f"no test cell exercises {graded.name}"


@pytest.mark.parametrize("nb_id", IDS)
def test_text_view_round_trips(nb_id):
    nb = read_notebook(ROOT / "notebooks" / nb_id / f"{nb_id}.ipynb")
    text = authoring.notebook_to_text(nb)
    again = authoring.text_to_notebook(text)
    assert authoring.notebook_to_text(again) == text
    assert [cell_source(c) for c in again["cells"]] == [cell_source(c) for c in nb["cells"]]


@pytest.mark.parametrize("nb_id", IDS)
def test_notebook_runs_end_to_end_in_tiny_configuration(nb_id, tmp_path):
    """nbclient runs every cell (demos included) under NBGRADER_EXECUTION, as grading does."""
    res = execute_notebook(ROOT / "notebooks" / nb_id / f"{nb_id}.ipynb", tmp_path, tiny=True,
                           cell_timeout=120, progress=False)
    assert res.error is None, res.error
    test_cells = [i for i, c in enumerate(res.executed.cells) if cell_kind(c) == "test"]
    assert not set(res.stderr_cells) & set(test_cells), "test cells must write nothing to stderr (nbgrader gives 0)"
    assert res.plots, "the notebook's demos saved no plot"
