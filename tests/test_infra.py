"""load_notebook, the exporter and the text authoring view, on small notebooks made here."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import pytest

from autograder.authoring import text_to_notebook, write_notebook
from helpers import NotebookLoadError, load_notebook
from helpers.export import export, module_name, refresh

ROOT = Path(__file__).resolve().parent.parent

FIRST = '''# %% [markdown]
# # A first notebook
# %% [export]
import math
SCALE = 2
# %% [solution] double
def double(x: float) -> float:
    """Return $2x$."""
    ### BEGIN SOLUTION
    return SCALE * x
    ### END SOLUTION
# %% [test] test_double points=1
assert double(2) == 4
### BEGIN HIDDEN TESTS
assert double(3) == 6
### END HIDDEN TESTS
# %% [demo]
raise RuntimeError("demo cells must not run when the notebook is loaded")
'''

SECOND = '''# %% [export]
from minirlhf.first import double
# %% [solution] quad
def quad(x: float) -> float:
    """Return $4x$."""
    ### BEGIN SOLUTION
    return double(double(x))
    ### END SOLUTION
# %% [test] test_quad points=1
assert quad(1) == 4
### BEGIN HIDDEN TESTS
assert quad(2) == 8
### END HIDDEN TESTS
'''


@pytest.fixture
def course_root(tmp_path, monkeypatch):
    for nb_id, text in (("01_first", FIRST), ("02_second", SECOND)):
        write_notebook(text_to_notebook(text), tmp_path / "notebooks" / nb_id / f"{nb_id}.ipynb")
    shutil.copytree(ROOT / "helpers", tmp_path / "helpers", ignore=shutil.ignore_patterns("__pycache__", "data"))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m == "minirlhf" or m.startswith("minirlhf.")]:
        del sys.modules[name]


def test_load_notebook_runs_library_cells_only(course_root):
    m = load_notebook(course_root / "notebooks/01_first/01_first.ipynb")
    assert m.double(5) == 10 and m.SCALE == 2 and m.math.pi > 3


def test_load_notebook_names_the_failing_cell(tmp_path):
    bad = FIRST.replace("SCALE = 2", "SCALE = 1 / 0")
    write_notebook(text_to_notebook(bad), tmp_path / "bad.ipynb")
    with pytest.raises(NotebookLoadError, match=r"bad.ipynb, cell 1 \(export_1\).*ZeroDivisionError"):
        load_notebook(tmp_path / "bad.ipynb")


def test_load_notebook_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="notebook not found"):
        load_notebook(tmp_path / "nope.ipynb")


def test_export_slices_by_notebook_and_strips_markers(course_root, tmp_path):
    written = export(course_root, tmp_path / "rel", before="02_second")
    assert sorted(p.name for p in written) == ["__init__.py", "first.py"]
    code = (tmp_path / "rel/minirlhf/first.py").read_text()
    assert "BEGIN SOLUTION" not in code and "return SCALE * x" in code and "RuntimeError" not in code


def test_later_notebook_imports_earlier_reference_code(course_root):
    export(course_root)
    m = load_notebook(course_root / "notebooks/02_second/02_second.ipynb")
    assert m.quad(3) == 12


def test_exports_refresh_when_a_notebook_changes(course_root):
    export(course_root)
    assert refresh(course_root) == []
    path = course_root / "notebooks/01_first/01_first.ipynb"
    write_notebook(text_to_notebook(FIRST.replace("SCALE = 2", "SCALE = 3")), path)
    assert [p.name for p in refresh(course_root)] == ["first.py"]
    mod = importlib.import_module("minirlhf.first")
    assert mod.double(1) == 3


def test_module_names():
    assert module_name("06_gae") == "gae"
    with pytest.raises(ValueError):
        module_name("gae")


def test_authoring_rejects_untitled_solution():
    with pytest.raises(ValueError, match="grade id"):
        text_to_notebook("# %% [solution]\ndef f(): pass\n")


def test_refresh_exports_everything_in_a_fresh_checkout(course_root):
    written = refresh(course_root)
    assert sorted(p.name for p in written) == ["__init__.py", "first.py", "second.py"]


# ----------------------------------------------------------------------------- the release schedule


def test_a_release_carries_earlier_notebooks_and_no_builders(course_root, tmp_path):
    from autograder import course

    assert course.earlier_notebooks("02_second", course_root) == ["01_first"]
    assert course.earlier_notebooks("01_first", course_root) == []
    (course_root / "builders").mkdir()
    (course_root / "builders" / "secret.py").write_text("ANSWER = 42\n")
    crs = course.build_course(tmp_path / "crs", ["01_first", "02_second"], course_root)
    for nb_id, modules in (("01_first", set()), ("02_second", {"first.py"})):
        dest = crs / "source" / nb_id
        assert {p.name for p in (dest / "minirlhf").glob("*.py")} - {"__init__.py"} == modules
        assert (dest / "helpers").is_dir() and not (dest / "builders").exists()


def test_release_without_ids_prints_the_schedule_and_writes_nothing(tmp_path, capsys):
    from autograder import cli, course

    out = tmp_path / "release"
    assert cli.main(["release", "--out", str(out)]) == 0
    assert not out.exists(), "`release` with no id must only print the schedule"
    text = capsys.readouterr().out
    ids = course.notebook_ids()
    assert "only after notebook k-1's deadline" in text and "release --all" in text
    for k, nb_id in enumerate(ids):
        (line,) = [ln for ln in text.splitlines() if ln.strip().startswith(nb_id + " ")]
        listed = set(line.split("(", 1)[1].split(")", 1)[0].split(", ")) if "(" in line else set()
        assert listed == {module_name(i) for i in ids[:k]}, line
        assert (f"after {ids[k - 1]}'s deadline" in line) if k else ("any time" in line), line
        for name in course.NOTEBOOK_ARTIFACTS.get(nb_id, ()):
            assert name in line, line


def test_release_of_an_unknown_id_fails_before_building(tmp_path):
    from autograder import cli

    with pytest.raises(SystemExit, match="unknown assignment 'no_such'"):
        cli.main(["release", "no_such", "--out", str(tmp_path / "release")])
    assert not (tmp_path / "release").exists()
