"""A student's first hour: the how-to-work cell, and demo cells that stop in one line while a function is unwritten."""

from __future__ import annotations

import copy
import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

from autograder import workflow
from autograder.course import ROOT
from helpers import runtime
from helpers.export import source_notebooks
from helpers.notebook import cell_kind, cell_source, nbgrader_meta, read_notebook

NOTEBOOKS = source_notebooks(ROOT)


def test_every_notebook_has_a_current_how_to_work_cell_and_guards():
    """`python -m autograder.workflow` has been run since the last change to a notebook's graded cells."""
    assert workflow.main(["--check"]) == 0, "run `.venv/bin/python -m autograder.workflow` and commit the notebooks"


@pytest.mark.parametrize("nb_id,path", NOTEBOOKS, ids=[i for i, _ in NOTEBOOKS])
def test_points_table_adds_up_to_what_nbgrader_grades(nb_id, path):
    nb = read_notebook(path)
    graded = sum(float(nbgrader_meta(c).get("points", 0)) for c in nb["cells"] if cell_kind(c) == "test")
    cell = next(cell_source(c) for c in nb["cells"] if cell_source(c).startswith(workflow.HEADING))
    total = re.search(r"\*\*total: ([0-9.]+)\*\*", cell)
    assert total and float(total.group(1)) == graded, f"{nb_id}: the table says {total and total.group(1)}, nbgrader grades {graded}"
    assert nb["cells"].index(next(c for c in nb["cells"] if cell_source(c).startswith(workflow.HEADING))) == 1


def test_stub_detection():
    def stub(x):
        """The released body."""
        raise NotImplementedError()

    def written(x, device="cpu"):
        if device == "mps":
            raise NotImplementedError("mps")  # a real function may raise it for a case it does not cover
        return x

    class Stub:
        def forward(self):
            raise NotImplementedError()

    class Written:
        def forward(self):
            return 1

    assert runtime._is_stub(stub) and runtime._is_stub(Stub)
    assert not runtime._is_stub(written) and not runtime._is_stub(Written) and not runtime._is_stub(3)


def test_needs_names_the_unwritten_function_in_one_line():
    def stub():
        raise NotImplementedError()

    def done():
        return 1

    namespace = {"runtime": runtime, "stub": stub, "done": done}
    exec("runtime.needs('done')", namespace)  # nothing to say
    with pytest.raises(runtime.NotWrittenYet, match="write `stub` first") as info:
        exec("runtime.needs('done', 'stub')", namespace)
    assert info.value._render_traceback_() == [f"NotWrittenYet: {info.value}"]
    with pytest.raises(runtime.NotWrittenYet, match="run the cell that defines `missing`"):
        exec("runtime.needs('missing')", namespace)


def test_guards_follow_names_made_by_earlier_demo_cells():
    nb = {"cells": [
        {"cell_type": "code", "metadata": {"nbgrader": {"solution": True, "grade": False, "grade_id": "f"}},
         "source": "def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n"},
        {"cell_type": "code", "metadata": {"nbgrader": {"solution": True, "grade": False, "grade_id": "g"}},
         "source": "def g(x):\n    ### BEGIN SOLUTION\n    return f(x) + 1\n    ### END SOLUTION\n"},
        {"cell_type": "code", "metadata": {}, "source": "import math\nA = 2"},
        {"cell_type": "code", "metadata": {}, "source": "B = f(A)"},
        {"cell_type": "code", "metadata": {}, "source": "print(B + math.pi)"},
        {"cell_type": "code", "metadata": {}, "source": "print(g(1))"},
    ]}
    assert workflow.guard_demo_cells(nb)
    sources = [cell_source(c) for c in nb["cells"]]
    assert not sources[2].startswith(workflow.GUARD)
    assert sources[3].startswith('runtime.needs("f")\n') and sources[4].startswith('runtime.needs("f")\n')
    assert sources[5].startswith('runtime.needs("f", "g")\n')  # g calls f
    assert not workflow.guard_demo_cells(nb), "guarding twice changes nothing"


def test_a_blank_notebook_stops_in_one_line_not_in_name_errors(tmp_path):
    """Notebook 06 with every solution blanked as nbgrader does, run like Run All that goes on after errors."""
    from nbgrader.preprocessors import ClearSolutions

    nb_id, path = next((i, p) for i, p in NOTEBOOKS if i == "06_gae")
    nb = nbformat.read(path, as_version=4)
    nb, _ = ClearSolutions(code_stub={"python": "# YOUR CODE HERE\nraise NotImplementedError()"}).preprocess(nb, {})
    env = {**os.environ, "NBGRADER_EXECUTION": "autograde", "COURSE_PLOT_DIR": str(tmp_path),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    client = NotebookClient(copy.deepcopy(nb), timeout=120, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}})
    with client.setup_kernel(env=env, cwd=str(path.parent)):
        for index, cell in enumerate(client.nb.cells):
            client.execute_cell(cell, index)
    errors = {(cell_kind(c), o["ename"]) for c in client.nb.cells for o in c.get("outputs", [])
              if o.get("output_type") == "error"}
    assert ("demo", "NameError") not in errors, f"a demo cell failed with a NameError: {errors}"
    assert ("demo", "NotWrittenYet") in errors, f"no demo cell said which function to write first: {errors}"
    kinds = {kind for kind, ename in errors if ename == "NotImplementedError"}
    assert kinds <= {"test"}, f"only test cells may show the stub's NotImplementedError, got it in {kinds}"


def test_labeling_ui_has_shipped_samples_before_the_students_own():
    """Notebook 03's labeling cell ranks these until `sample_k_responses` works (builders/labeling_samples.py)."""
    from helpers.samples import labeling_samples
    from helpers.world import World

    records = labeling_samples()
    prompts = set(World(0).prompts("train"))
    assert len(records) == 5
    for r in records:
        assert r["prompt"] in prompts, f"not a training prompt of the world: {r['prompt']!r}"
        assert len(set(r["responses"])) == len(r["responses"]) >= 2 and all(isinstance(t, str) and t for t in r["responses"])
    source = next(cell_source(c) for c in read_notebook(ROOT / "notebooks/03_preference_data/03_preference_data.ipynb")["cells"]
                  if "label_rankings(" in cell_source(c) and cell_kind(c) == "demo")
    assert "samples.labeling_samples()" in source and not source.startswith(workflow.GUARD)
