"""The nbgrader round trip, run by nbgrader itself, for every notebook that exists.

One temporary course per assignment. For each one, the source notebook is
submitted by student ``reference`` (must score full marks) and the unmodified release
notebook by student ``blank`` (must score 0, grade without crashing, and show a
NotImplementedError in its feedback). The release itself must carry no solution line,
no hidden test, and nothing of notebook k (or later) in its exported modules.
"""

from __future__ import annotations

import ast
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from autograder import course
from helpers.notebook import (
    BEGIN_HIDDEN,
    BEGIN_SOLUTION,
    END_HIDDEN,
    END_SOLUTION,
    cell_kind,
    cell_source,
    nbgrader_meta,
    read_notebook,
)

ROOT = Path(__file__).resolve().parent.parent
IDS = course.notebook_ids()
STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
ALLOWED_IMPORTS = {"torch", "math", "minirlhf", "__future__"}


def grade_round_trip(nb_id: str, folder: Path) -> Path:
    """A course where ``nb_id`` was released, submitted twice (source, blank release) and autograded."""
    crs = course.build_course(folder, [nb_id])
    course.generate_assignment(crs, nb_id)
    course.submit(crs, nb_id, "reference", ROOT / "notebooks" / nb_id / f"{nb_id}.ipynb")
    course.submit(crs, nb_id, "blank", crs / "release" / nb_id / f"{nb_id}.ipynb")
    course.autograde(crs, nb_id)
    course.generate_feedback(crs, nb_id)
    return crs


@pytest.mark.parametrize("nb_id", IDS)
def test_round_trip(nb_id, tmp_path):
    """One test per notebook (one nbgrader run), so xdist spreads notebooks over workers."""
    crs = grade_round_trip(nb_id, tmp_path / "course")
    check_source_notebook_scores_full_marks(crs, nb_id)
    check_release_notebook_scores_zero_with_clear_feedback(crs, nb_id)
    check_release_keeps_signature_and_docstring_only(crs, nb_id)
    check_release_leaks_no_solution_or_hidden_test(crs, nb_id)


def split_regions(source: str, begin: str, end: str) -> tuple[list[str], list[str]]:
    """(outside, inside): the text between marked regions and the text of each region."""
    outside, inside, current, depth = [], [], [], None
    for line in source.split("\n"):
        if line.strip() == begin:
            assert depth is None, f"nested {begin}"
            outside.append("\n".join(current))
            current, depth = [], line[: len(line) - len(line.lstrip())]
        elif line.strip() == end:
            assert depth is not None, f"{end} without {begin}"
            inside.append("\n".join(current))
            current, depth = [], None
        else:
            current.append(line)
    assert depth is None, f"{begin} without {end}"
    outside.append("\n".join(current))
    return outside, inside


def with_stubs(source: str) -> str:
    """What nbgrader's ClearSolutions should make of a solution cell: each region -> the stub."""
    out, in_region = [], False
    for line in source.split("\n"):
        if line.strip() == BEGIN_SOLUTION:
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + ln for ln in STUB.split("\n"))
            in_region = True
        elif line.strip() == END_SOLUTION:
            in_region = False
        elif not in_region:
            out.append(line)
    return "\n".join(out)


def secret_lines(nb: dict) -> set[str]:
    """Distinctive lines that exist only inside solution or hidden-test regions."""
    inside, outside = set(), set()
    for cell in nb["cells"]:
        marks = {"solution": (BEGIN_SOLUTION, END_SOLUTION), "test": (BEGIN_HIDDEN, END_HIDDEN)}.get(cell_kind(cell))
        outer, inner = split_regions(cell_source(cell), *marks) if marks else ([cell_source(cell)], [])
        inside |= {ln.strip() for part in inner for ln in part.split("\n")}
        outside |= {ln.strip() for part in outer for ln in part.split("\n")}
    # Imports and comments give nothing away (hidden tests re-import helpers that visible code uses too).
    return {ln for ln in inside - outside if len(ln) >= 20 and not ln.startswith(("#", "import ", "from "))}


def scores(crs: Path, nb_id: str, student: str) -> course.NotebookScore:
    (score,) = course.read_scores(crs, nb_id, student)
    return score


def check_source_notebook_scores_full_marks(crs: Path, nb_id: str) -> None:
    score = scores(crs, nb_id, "reference")
    lost = [c for c in score.cells if c.score != c.max_score]
    assert score.max_score > 0
    assert not lost, f"reference solution lost points in {[c.grade_id for c in lost]}"


def check_release_notebook_scores_zero_with_clear_feedback(crs: Path, nb_id: str) -> None:
    score = scores(crs, nb_id, "blank")
    assert score.score == 0, f"an empty submission earned points: {[c for c in score.cells if c.score]}"
    autograded = read_notebook(crs / "autograded" / "blank" / nb_id / f"{nb_id}.ipynb")
    tests = [c for c in autograded["cells"] if cell_kind(c) == "test"]
    for cell in tests:
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        assert errors, f"test cell {nbgrader_meta(cell)['grade_id']} of the blank release did not fail"
        assert errors[0]["ename"] == "NotImplementedError", (
            f"{nbgrader_meta(cell)['grade_id']}: expected NotImplementedError, got {errors[0]['ename']}"
        )
    html = (crs / "feedback" / "blank" / nb_id / f"{nb_id}.html").read_text(encoding="utf-8")
    assert html.count("NotImplementedError") >= len(tests)


def check_release_keeps_signature_and_docstring_only(crs: Path, nb_id: str) -> None:
    source = read_notebook(ROOT / "notebooks" / nb_id / f"{nb_id}.ipynb")
    release = read_notebook(crs / "release" / nb_id / f"{nb_id}.ipynb")
    src_cells = [c for c in source["cells"] if cell_kind(c) in ("solution", "test")]
    rel_cells = [c for c in release["cells"] if cell_kind(c) in ("solution", "test")]
    assert [nbgrader_meta(c)["grade_id"] for c in src_cells] == [nbgrader_meta(c)["grade_id"] for c in rel_cells]
    for src, rel in zip(src_cells, rel_cells):
        grade_id = nbgrader_meta(src)["grade_id"]
        if cell_kind(src) == "solution":
            assert cell_source(rel).rstrip() == with_stubs(cell_source(src)).rstrip(), (
                f"{grade_id}: the release differs from the source beyond the stubs"
            )
            tree = ast.parse(cell_source(rel))
            defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
            assert len(defs) == 1, f"{grade_id}: a solution cell holds exactly one graded function or class"
            assert ast.get_docstring(defs[0]), f"{grade_id}: the graded function needs its docstring"
        elif BEGIN_HIDDEN in cell_source(src):
            (visible, after), _ = split_regions(cell_source(src), BEGIN_HIDDEN, END_HIDDEN)
            assert cell_source(rel).strip() == (visible + "\n" + after).strip(), (
                f"{grade_id}: the released test cell differs from the visible part"
            )


def check_release_leaks_no_solution_or_hidden_test(crs: Path, nb_id: str) -> None:
    from helpers.export import module_name

    folder = crs / "release" / nb_id
    shipped = sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in shipped:
        if path.relative_to(folder).parts[0] == "helpers":
            continue  # helpers/ defines the marker strings; it is compared with the course's copy below
        text = path.read_text(encoding="utf-8", errors="ignore")
        for marker in (BEGIN_SOLUTION, END_SOLUTION, BEGIN_HIDDEN, END_HIDDEN):
            assert marker not in text, f"{path.relative_to(folder)} contains {marker!r}"
    # The notebook: none of its own solution or hidden-test lines.
    secrets = secret_lines(read_notebook(ROOT / "notebooks" / nb_id / f"{nb_id}.ipynb"))
    assert secrets, "no solution lines found to look for"
    release_nb = read_notebook(folder / f"{nb_id}.ipynb")
    released = {ln.strip() for c in release_nb["cells"] for ln in cell_source(c).split("\n")}
    leaked = sorted(secrets & released)
    assert not leaked, f"the released notebook leaks solution/hidden-test lines: {leaked[:3]}"
    # minirlhf/: the modules of earlier notebooks and nothing else.
    modules = {p.stem: p for p in (folder / "minirlhf").glob("*.py") if p.stem != "__init__"}
    assert set(modules) == {module_name(i) for i in IDS if i < nb_id}
    for i in IDS:
        if i < nb_id:
            assert f"exported from {i}.ipynb" in modules[module_name(i)].read_text(encoding="utf-8")
    # helpers/: an exact copy of the course's helpers (which hold no solution, see below).
    for path in shipped:
        rel = path.relative_to(folder)
        if rel.parts[0] == "helpers":
            assert path.read_bytes() == (ROOT / rel).read_bytes(), f"{rel} differs from the course's helpers"
    unexpected = [str(p.relative_to(folder)) for p in shipped
                  if p.relative_to(folder).parts[0] not in ("helpers", "minirlhf", "artifacts") and p.name != f"{nb_id}.ipynb"]
    assert not unexpected, f"unexpected files in the release (builders/ never ships): {unexpected}"
    # artifacts/: the models the notebook loads, and the digests of the (unreleased) code that built them.
    if course.NOTEBOOK_ARTIFACTS.get(nb_id):
        assert (folder / "artifacts" / "sources.json").is_file(), "the release cannot compute its artifacts' keys"


def test_helpers_hold_no_solution():
    """helpers/ ships with every release: it must not contain reference code of any notebook.

    Exact long lines only; tests/test_leaks.py compares normalised ASTs (paraphrases, constructs)."""
    solutions = set()
    for nb_id in IDS:
        nb = read_notebook(ROOT / "notebooks" / nb_id / f"{nb_id}.ipynb")
        for cell in nb["cells"]:
            if cell_kind(cell) == "solution":
                _, inner = split_regions(cell_source(cell), BEGIN_SOLUTION, END_SOLUTION)
                solutions |= {ln.strip() for part in inner for ln in part.split("\n") if len(ln.strip()) >= 40}
    for path in sorted((ROOT / "helpers").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        leaked = [ln for ln in solutions if ln in text]
        assert not leaked, f"{path.relative_to(ROOT)} contains reference-solution lines: {leaked[:3]}"


@pytest.mark.parametrize("nb_id", IDS)
def test_student_facing_code_imports_only_torch_math_stdlib(nb_id):
    nb = read_notebook(ROOT / "notebooks" / nb_id / f"{nb_id}.ipynb")
    allowed = ALLOWED_IMPORTS | set(sys.stdlib_module_names)
    for i, cell in enumerate(nb["cells"]):
        if cell_kind(cell) not in ("solution", "export"):
            continue
        for node in ast.walk(ast.parse(cell_source(cell))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            bad = [n for n in names if n.split(".")[0] not in allowed]
            assert not bad, f"{nb_id} cell {i} imports {bad}: library code may use torch, math, the stdlib only"


def smallest_notebook() -> str:
    """The smallest notebook that loads no trained model (its release builds nothing: seconds, not minutes)."""
    from autograder.course import NOTEBOOK_ARTIFACTS

    light = [i for i in IDS if not NOTEBOOK_ARTIFACTS.get(i)]
    return min(light, key=lambda i: (ROOT / "notebooks" / i / f"{i}.ipynb").stat().st_size)


def test_grade_cli_prints_json_last_line(tmp_path):
    """The CLI outside checkers call: `grade ASSIGNMENT NB --json`, JSON on the last stdout line."""
    nb_id = smallest_notebook()
    proc = subprocess.run(
        [sys.executable, "-m", "autograder", "grade", nb_id, str(ROOT / "notebooks" / nb_id / f"{nb_id}.ipynb"),
         "--json", "--feedback", str(tmp_path / "fb")],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["score"] == result["max_score"] > 0
    assert Path(result["feedback"]).is_file()


def test_release_and_grade_all_cli(tmp_path):
    """`release` then `grade-all` on a class of two: full marks for the source, 0 for the blank release."""
    nb_id = smallest_notebook()
    rel = tmp_path / "release"
    proc = subprocess.run([sys.executable, "-m", "autograder", "release", nb_id, "--out", str(rel)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [p.name for p in rel.iterdir()] == [nb_id], "release ID writes that folder and no other"
    earlier = course.earlier_notebooks(nb_id)
    assert f"{nb_id} -> {rel / nb_id}: holds the solutions of" in proc.stdout, proc.stdout[-2000:]
    assert (f"give it out after {earlier[-1]}'s deadline" if earlier else "give it out any time") in proc.stdout
    subs = tmp_path / "submissions"
    for student, nb in (("ada", ROOT / "notebooks" / nb_id / f"{nb_id}.ipynb"), ("bo", rel / nb_id / f"{nb_id}.ipynb")):
        (subs / student / nb_id).mkdir(parents=True)
        (subs / student / nb_id / f"{nb_id}.ipynb").write_bytes(nb.read_bytes())
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade-all", str(subs), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader((out / "grades.csv").open()))
    by_student = {r["student"]: r for r in rows}
    assert float(by_student["ada"]["score"]) == float(by_student["ada"]["max_score"]) > 0
    assert float(by_student["bo"]["score"]) == 0
    assert (out / "feedback" / "bo" / nb_id / f"{nb_id}.html").is_file()
