"""Grading submissions: one notebook (``grade``) or a class in parallel (``grade-all --workers N``).

Each submission goes through the same steps, in one Python process per worker that imports nbgrader
once and keeps one course folder and one gradebook:

1. **Read it.** An empty file, invalid JSON or something that is not a notebook gets 0 with a sentence
   saying so; nbgrader is never asked.
2. **Put the test cells back** (:func:`restore_test_cells`): every test cell comes from the release, at
   its place after the cell it follows in the source, whatever the student deleted, edited, duplicated
   or moved (nbgrader restores the text of a test cell it finds, not a deleted or moved one).
3. **Autograde** with nbgrader's own ``Autograde`` (it restores ``helpers/``, ``minirlhf/``,
   ``artifacts/`` from the source), its ``Execute`` step replaced by :class:`autograder.kernel.GradingExecute`
   (sandbox, time and memory limits, crash recovery, the test-tool guard).
4. **Explain.** Per test cell: points and, when it lost them, one sentence (:func:`failure_message`).
5. **Feedback** with nbgrader's ``GenerateFeedback``, after :func:`student_notebook` has taken the hidden
   tests out of the graded notebook (their source, and any traceback frame or printed line that quotes
   them), unless ``show_hidden_tests`` is set.

The generated assignment (release + gradebook) of a course depends only on the source files, so it is
built once and cached under ``$RLHF_COURSE_CACHE/grading/`` (keyed by their digest); a worker copies it.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from autograder import course
from autograder.limits import (
    CELL_TIMEOUT,
    CRASH,
    GRADER_ERRORS,
    MEMORY,
    NOT_RUN,
    NOTEBOOK_TIMEOUT,
    TAMPERING,
    Limits,
)
from helpers.notebook import BEGIN_HIDDEN, END_HIDDEN, cell_kind, cell_source, nbgrader_meta

STUDENT = course.STUDENT
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
HIDDEN_NOTE = "# (hidden tests: not shown in feedback)"


# ------------------------------------------------------------------------------------- reading


class SubmissionError(ValueError):
    """The submitted file cannot be graded at all; the message is for the student."""


def read_submission(path: Path) -> dict:
    """The submitted notebook as a dict, or :class:`SubmissionError` saying in one sentence why not."""
    import nbformat

    data = path.read_bytes()
    if not data.strip():
        raise SubmissionError("the submitted file is empty: save the notebook in Jupyter and submit it again")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SubmissionError("the submitted file is not a Jupyter notebook (it is not text)") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SubmissionError(f"the submitted file is not a valid notebook: its JSON is broken at line {exc.lineno}, "
                              f"column {exc.colno} ({exc.msg}); download it again from Jupyter "
                              "(File > Download) and submit that") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("cells"), list):
        raise SubmissionError("the submitted file is JSON but not a Jupyter notebook (it has no list of cells)")
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # nbformat's ValidationError, or anything a malformed file raises
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise SubmissionError(f"the submitted file is not a valid Jupyter notebook ({first})") from None
    return nb


def restore_test_cells(nb: dict, release_nb: dict) -> tuple[dict, list[str]]:
    """Every test cell of the release, in its place; returns (notebook, notes for the student).

    Test cells are recognised by their nbgrader ``grade_id``. Each one is put right after the cell that
    precedes it in the release (found by ``grade_id`` in the submission, e.g. its solution cell, wherever
    the student moved that), or at the end. Cells claiming a ``grade_id`` the release does not have lose
    their nbgrader metadata, so they cannot award points.
    """
    release_cells = release_nb["cells"]
    test_ids = [nbgrader_meta(c)["grade_id"] for c in release_cells if cell_kind(c) == "test"]
    known = {nbgrader_meta(c).get("grade_id") for c in release_cells} - {None}
    notes: list[str] = []
    submitted_tests: dict[str, list[tuple[int, dict]]] = {}
    kept = []
    for cell in nb["cells"]:
        meta = nbgrader_meta(cell)
        gid = meta.get("grade_id")
        if gid in test_ids:
            submitted_tests.setdefault(gid, []).append((len(kept), cell))
            continue
        if meta and gid not in known:
            cell = copy.deepcopy(cell)
            cell["metadata"].pop("nbgrader", None)
        kept.append(cell)
    out = list(kept)
    for pos, rel_cell in enumerate(release_cells):
        if cell_kind(rel_cell) != "test":
            continue
        gid = nbgrader_meta(rel_cell)["grade_id"]
        anchor = None
        for prev in reversed(release_cells[:pos]):
            pid = nbgrader_meta(prev).get("grade_id")
            if pid is None:
                continue
            anchor = next((i for i, c in enumerate(out) if nbgrader_meta(c).get("grade_id") == pid), None)
            if anchor is not None:
                break
        fresh = copy.deepcopy(rel_cell)
        fresh["outputs"], fresh["execution_count"] = [], None
        out.insert(len(out) if anchor is None else anchor + 1, fresh)
        found = submitted_tests.get(gid, [])
        if not found:
            notes.append(f"the test cell {gid} was missing: the grader put it back")
        elif len(found) > 1:
            notes.append(f"the test cell {gid} appeared {len(found)} times: the grader kept one")
        elif _visible(cell_source(found[0][1])) != _visible(cell_source(rel_cell)):
            notes.append(f"the test cell {gid} was edited: the grader used the original")
    order = [nbgrader_meta(c).get("grade_id") for c in nb["cells"] if nbgrader_meta(c).get("grade_id") in test_ids]
    placed = [nbgrader_meta(c).get("grade_id") for c in out if nbgrader_meta(c).get("grade_id") in test_ids]
    if order and len(order) == len(set(order)) and order != [g for g in placed if g in order]:
        notes.append("test cells were moved: the grader put them back in their places")
    nb = copy.deepcopy(nb)
    nb["cells"] = out
    return nb, notes


def _visible(source: str) -> str:
    """A test cell's text without its hidden-test region (a submitted *source* notebook still has one)."""
    out, inside = [], False
    for line in source.split("\n"):
        if line.strip() == BEGIN_HIDDEN:
            inside = True
        elif line.strip() == END_HIDDEN:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out).strip()


# ---------------------------------------------------------------------------------- messages


def _clean(text: str) -> str:
    return _ADDRESS.sub(" at 0x…", _ANSI.sub("", text or "")).strip()


def failure_message(cell: dict, function: str | None) -> str:
    """One sentence for a student about why a test cell lost its points ("" if it did not fail)."""
    errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    if not errors:
        return ""
    grader = [o for o in errors if o.get("ename") in GRADER_ERRORS]
    err = grader[-1] if grader else errors[0]
    ename, evalue = err.get("ename", "Error"), _clean(err.get("evalue", ""))
    what = f"`{function}`" if function else "the code it tests"
    if ename in GRADER_ERRORS:
        if not evalue:
            return ename
        return evalue[0].upper() + evalue[1:] + ("" if evalue.endswith((".", "?", "!")) else ".")
    if ename == "NotImplementedError" and not evalue:
        return f"{what} is not written yet: it still raises NotImplementedError."
    if ename == "NameError":
        return f"NameError: {evalue} — run (or restore) the cell that defines it, above this test."
    if ename == "SystemExit":
        return f"{what} called sys.exit() ({evalue or 'no code'}): a graded function must return, never exit Python."
    first = evalue.splitlines()
    body = " ".join(line.strip() for line in first[:6] if line.strip())
    if len(body) > 400:
        body = body[:399] + "…"
    return f"{ename}: {body}" if ename != "AssertionError" else body or "a check failed (AssertionError)"


def status_of(cell: dict, score: float, max_score: float) -> str:
    enames = {o.get("ename") for o in cell.get("outputs", []) if o.get("output_type") == "error"}
    for ename, status in ((NOTEBOOK_TIMEOUT, "time limit"), (CELL_TIMEOUT, "time limit"), (MEMORY, "memory limit"),
                          (CRASH, "crashed"), (TAMPERING, "tampering"), (NOT_RUN, "not run")):
        if ename in enames:
            return status
    if score >= max_score:
        return "passed"
    return "partial" if score > 0 else "failed"


def functions_of_tests(source_nb: dict) -> dict[str, str]:
    """grade_id of each test cell -> the graded function it tests (the solution cell before it)."""
    out, current = {}, None
    for cell in source_nb["cells"]:
        kind = cell_kind(cell)
        if kind == "solution":
            current = nbgrader_meta(cell).get("grade_id")
        elif kind == "test":
            out[nbgrader_meta(cell)["grade_id"]] = current
    return out


# ---------------------------------------------------------------------------------- feedback


def hidden_lines(source_nb: dict) -> set[str]:
    """Distinctive lines of the hidden tests (stripped, >= 16 characters, not shared with visible code)."""
    hidden, visible = set(), set()
    for cell in source_nb["cells"]:
        inside = False
        for line in cell_source(cell).split("\n"):
            s = line.strip()
            if s == BEGIN_HIDDEN:
                inside = True
            elif s == END_HIDDEN:
                inside = False
            elif inside:
                hidden.add(s)
            else:
                visible.add(s)
    return {s for s in hidden - visible if len(s) >= 16 and not s.startswith(("#", "import ", "from "))}


def student_notebook(nb: dict, release_nb: dict, secrets: set[str], workdir: Path | None = None, *,
                     hide: bool = True) -> dict:
    """The graded notebook as its student may see it, the same for every run of the same submission.

    ``hide``: test cells as released and no quoted hidden-test line (traceback frame, printed line).
    Always: paths inside the graded folder relative (``helpers/checks.py``, not the grader's temporary
    folder), and the kernel's private folder shown as ``$HOME``.
    """
    released = {nbgrader_meta(c).get("grade_id"): cell_source(c) for c in release_nb["cells"] if cell_kind(c) == "test"}
    nb = copy.deepcopy(nb)

    def leaks(text: str) -> bool:
        plain = _ANSI.sub("", text)
        return hide and any(s in plain for s in secrets)

    def local(text):
        return relative_paths(text, workdir) if isinstance(text, str) else text

    for cell in nb["cells"]:
        gid = nbgrader_meta(cell).get("grade_id")
        if hide and cell.get("cell_type") == "code" and gid in released:
            visible = released[gid].rstrip()
            if visible != cell_source(cell).rstrip():
                cell["source"] = visible + "\n" + HIDDEN_NOTE
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if out.get("output_type") == "error":
                frames = [local(f) for f in out.get("traceback", [])]
                kept = [f for f in frames if not leaks(f)]
                if len(kept) != len(frames):
                    kept.insert(min(1, len(kept)), "(a frame inside the hidden tests, not shown)")
                out["traceback"] = kept
                out["evalue"] = local(out.get("evalue", ""))
                if leaks(out["evalue"]):
                    out["evalue"] = "(message quoting the hidden tests, not shown)"
            elif out.get("output_type") == "stream":
                text = out.get("text", "")
                text = local("".join(text) if isinstance(text, list) else text)
                out["text"] = "\n".join("[a line quoting the hidden tests, not shown]" if leaks(ln) else ln
                                        for ln in text.split("\n"))
            else:
                data = out.get("data", {})
                if isinstance(data.get("text/plain"), (str, list)):
                    plain = data["text/plain"]
                    data["text/plain"] = local("".join(plain) if isinstance(plain, list) else plain)
    return nb


_KERNEL_HOME = re.compile(r"/[^\s'\"<>]*?/rlhf-kernel-[A-Za-z0-9_]+")


def relative_paths(text: str, workdir: Path | None) -> str:
    """Paths of the graded folder relative to it, the kernel's private folder as ``$HOME``."""
    if workdir is not None:
        text = text.replace(f"{workdir}/", "").replace(str(workdir), ".")
    return _KERNEL_HOME.sub("$HOME", text)


# ---------------------------------------------------------------------------------- templates


def _digest(paths: Iterable[Path], base: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(base)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def template_cache() -> Path:
    from helpers.weights import cache_dir

    return cache_dir() / "grading"


def prepare_course(dest: Path, assignments: list[str]) -> Path:
    """An nbgrader course for ``assignments`` in ``dest``, its assignments generated (from the cache when it can)."""
    import nbgrader

    crs = course.build_course(dest, assignments)
    config = (crs / "nbgrader_config.py").read_text(encoding="utf-8").replace(str(crs), "<course>")
    key = hashlib.sha256((_digest((crs / "source").rglob("*"), crs) + config + nbgrader.__version__
                          + sys.version).encode()).hexdigest()[:20]
    cached = template_cache() / f"{'+'.join(assignments)[:80]}-{key}"
    if not (cached / "gradebook.db").is_file():
        for a in assignments:
            course.generate_assignment(crs, a)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=_ensure(template_cache())))
        shutil.copy(crs / "gradebook.db", tmp / "gradebook.db")
        shutil.copytree(crs / "release", tmp / "release")
        try:
            os.replace(tmp, cached)
        except OSError:  # another process cached it first
            shutil.rmtree(tmp, ignore_errors=True)
        return crs
    shutil.copy(cached / "gradebook.db", crs / "gradebook.db")
    shutil.copytree(cached / "release", crs / "release", dirs_exist_ok=True)
    return crs


def _ensure(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# --------------------------------------------------------------------------- nbgrader in process


@dataclass
class Grader:
    """One course folder, one gradebook, nbgrader imported once: what a worker grades with."""

    course_dir: Path
    limits: Limits
    show_hidden_tests: bool = False
    _config: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from nbgrader.converters import Autograde
        from nbgrader.preprocessors import Execute
        from traitlets.config.loader import PyFileConfigLoader

        from autograder.kernel import GradingExecute

        cfg = PyFileConfigLoader("nbgrader_config.py", path=str(self.course_dir)).load_config()
        steps = list(Autograde.class_traits()["autograde_preprocessors"].default())
        cfg.Autograde.autograde_preprocessors = [GradingExecute if s is Execute else s for s in steps]
        self.report_dir = self.course_dir / "grading_reports"
        for key, value in self.limits.nbgrader_config(self.report_dir).items():
            setattr(cfg.GradingExecute, key, value)
        cfg.Application.log_level = "WARN"
        import warnings

        warnings.filterwarnings("ignore", message=".*not in session.*")  # nbgrader's own SQLAlchemy noise
        self._config = cfg
        self._sources: dict[str, dict] = {}

    def _run(self, app_class, assignment: str, student: str, **attrs) -> None:
        from nbgrader.coursedir import CourseDirectory
        from nbgrader.utils import capture_log

        coursedir = CourseDirectory(config=self._config)
        coursedir.assignment_id, coursedir.student_id = assignment, student
        app = app_class(coursedir=coursedir, config=self._config)
        for k, v in attrs.items():
            setattr(app, k, v)
        result = capture_log(app)
        if not result["success"]:
            raise course.GradingError(f"nbgrader {app_class.__name__} failed for {student}/{assignment}:\n"
                                      f"{(result.get('log', '') + result.get('error', ''))[-3000:]}")

    def notebooks(self, assignment: str) -> tuple[dict, dict]:
        """(source, release) notebooks of an assignment."""
        if assignment not in self._sources:
            from helpers.notebook import read_notebook

            self._sources[assignment] = (
                read_notebook(self.course_dir / "source" / assignment / f"{assignment}.ipynb"),
                read_notebook(self.course_dir / "release" / assignment / f"{assignment}.ipynb"),
            )
        return self._sources[assignment]

    def grade(self, assignment: str, student: str, submission: Path, feedback_dir: Path | None = None) -> dict:
        """Grade one submission; the result dict of :func:`result_for` (+ ``feedback``: the HTML's path)."""
        from nbgrader.converters import Autograde, GenerateFeedback

        start = time.monotonic()
        source_nb, release_nb = self.notebooks(assignment)
        try:
            nb = read_submission(submission)
        except SubmissionError as exc:
            return unreadable_result(student, assignment, release_nb, source_nb, str(exc))
        nb, notes = restore_test_cells(nb, release_nb)
        dest = self.course_dir / "submitted" / student / assignment
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        import nbformat

        nbformat.write(nbformat.from_dict(nb), str(dest / f"{assignment}.ipynb"))
        self._run(Autograde, assignment, student, force=True, create_student=True)
        graded_path = self.course_dir / "autograded" / student / assignment / f"{assignment}.ipynb"
        graded = json.loads(graded_path.read_text(encoding="utf-8"))
        (score,) = course.read_scores(self.course_dir, assignment, student)
        report_file = self.report_dir / student / assignment / f"{assignment}.json"
        report = json.loads(report_file.read_text(encoding="utf-8")) if report_file.is_file() else {}
        workdir = graded_path.parent
        result = result_for(score, graded, source_nb, notes + report.get("notes", []), workdir)
        result["sandbox"] = report.get("sandbox", {})
        for key in ("restarts", "kernel_start_s", "run_s", "recover_s"):
            result[key] = report.get(key, 0)
        if feedback_dir is not None:
            shown = student_notebook(graded, release_nb, hidden_lines(source_nb), workdir,
                                     hide=not self.show_hidden_tests)
            graded_path.write_text(json.dumps(shown, indent=1), encoding="utf-8")
            self._run(GenerateFeedback, assignment, student, force=True)
            html = self.course_dir / "feedback" / student / assignment / f"{assignment}.html"
            feedback_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(html, feedback_dir / html.name)
            for name in ("timestamp.txt", "submission_secret.txt"):  # what `nbgrader release_feedback` reads
                if (submission.parent / name).is_file():
                    shutil.copy(submission.parent / name, feedback_dir / name)
            result["feedback"] = str(feedback_dir / html.name)
        result["seconds"] = round(time.monotonic() - start, 2)
        return result


def result_for(score: course.NotebookScore, graded: dict, source_nb: dict, notes: list[str],
               workdir: Path | None = None) -> dict:
    """The grading result of one notebook: the JSON ``grade --json`` prints and ``grade-all`` collects."""
    functions = functions_of_tests(source_nb)
    cells_by_id = {nbgrader_meta(c).get("grade_id"): c for c in graded["cells"]}
    cells = []
    for c in score.cells:
        cell = cells_by_id.get(c.grade_id, {})
        message = failure_message(cell, functions.get(c.grade_id)) if c.score < c.max_score else ""
        message = relative_paths(message, workdir)
        if c.score < c.max_score and not message:
            message = "this test printed an error or produced no result"
        cells.append({"grade_id": c.grade_id, "function": functions.get(c.grade_id), "score": c.score,
                      "max_score": c.max_score, "status": status_of(cell, c.score, c.max_score), "message": message})
    out = score.as_dict()
    out["cells"] = cells
    out["notes"] = list(dict.fromkeys(notes))
    return out


def unreadable_result(student: str, assignment: str, release_nb: dict, source_nb: dict, why: str) -> dict:
    functions = functions_of_tests(source_nb)
    tests = [c for c in release_nb["cells"] if cell_kind(c) == "test"]
    cells = [{"grade_id": nbgrader_meta(c)["grade_id"], "function": functions.get(nbgrader_meta(c)["grade_id"]),
              "score": 0.0, "max_score": float(nbgrader_meta(c).get("points", 0)), "status": "not run",
              "message": f"Not run: {why}."} for c in tests]
    return {"student": student, "assignment": assignment, "notebook": assignment, "score": 0.0,
            "max_score": sum(c["max_score"] for c in cells), "cells": cells, "notes": [], "error": why}


# ------------------------------------------------------------------------------------ one / all


def skip_slow_imports() -> None:
    """jsonschema imports ``rfc3987_syntax`` when installed, which builds a grammar at import (~2 s of every
    grading process's start) for an IRI format nbformat never checks: a grading process goes without."""
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)


def grade_one(assignment: str, submission: Path, limits: Limits, *, feedback: Path | None = None,
              show_hidden_tests: bool = False, keep: Path | None = None) -> dict:
    """``python -m autograder grade``: one submission in a temporary course."""
    skip_slow_imports()
    try:
        read_submission(submission)
    except SubmissionError as exc:  # said at once: no course, no nbgrader (the release has the source's test cells)
        from helpers.notebook import read_notebook

        source_nb = read_notebook(course.check_assignment(assignment))
        return unreadable_result(STUDENT, assignment, source_nb, source_nb, str(exc))
    with tempfile.TemporaryDirectory(prefix="rlhf-grade-") as tmp:
        crs = prepare_course(Path(tmp) / "course", [assignment])
        with course_environment():
            grader = Grader(crs, limits, show_hidden_tests)
            result = grader.grade(assignment, STUDENT, submission, feedback)
        if keep is not None:
            if keep.exists():
                shutil.rmtree(keep)
            shutil.copytree(crs, keep)
    return result


class course_environment:
    """The environment nbgrader and its kernels need (``course.nbgrader_env`` and one BLAS thread), for a while."""

    def __enter__(self):
        self.saved = dict(os.environ)
        env = course.nbgrader_env()
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        os.environ.clear()
        os.environ.update(env)
        return self

    def __exit__(self, *exc):
        os.environ.clear()
        os.environ.update(self.saved)
        return False


_WORKER: dict = {}


def _worker_init(assignments: list[str], limits: Limits, show_hidden_tests: bool, cwd: str) -> None:
    skip_slow_imports()
    os.chdir(cwd)
    tmp = Path(tempfile.mkdtemp(prefix="rlhf-grade-worker-"))
    env = course_environment()
    env.__enter__()
    _WORKER.update(tmp=tmp, grader=Grader(prepare_course(tmp / "course", assignments), limits, show_hidden_tests))
    import atexit

    atexit.register(shutil.rmtree, tmp, True)


def _worker_grade(task: tuple[str, str, str, str]) -> dict:
    import resource

    student, assignment, path, feedback_dir = task
    start = time.monotonic()
    try:
        result = _WORKER["grader"].grade(assignment, student, Path(path), Path(feedback_dir))
    except Exception as exc:  # the grader itself failed: say so, never lose the class's other grades
        source_nb, release_nb = _WORKER["grader"].notebooks(assignment)
        result = unreadable_result(student, assignment, release_nb, source_nb,
                                   f"the grader could not grade this notebook ({type(exc).__name__}); "
                                   "your instructor has the details")
        result["grader_error"] = str(exc)[-3000:]
    result["seconds"] = round(time.monotonic() - start, 2)
    result["worker"] = os.getpid()
    result["worker_peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["kernel_peak_rss"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return result


def find_submissions(subs: Path) -> list[tuple[str, str, Path]]:
    """(student, assignment, notebook) for every ``SUBMISSIONS/<student>/<id>/<id>.ipynb``."""
    found = [p for p in sorted(subs.glob("*/*/*.ipynb")) if p.stem == p.parent.name]
    return [(p.parent.parent.name, p.parent.name, p) for p in found]


def grade_all(subs: Path, out: Path, limits: Limits, *, workers: int = 1, show_hidden_tests: bool = False,
              on_result=None) -> list[dict]:
    """Grade every submission in ``workers`` processes; writes grades.csv, results.json, feedback/, report."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool
    import multiprocessing

    tasks = find_submissions(subs)
    if not tasks:
        raise SystemExit(f"no submissions found: expected {subs}/<student>/<assignment>/<assignment>.ipynb")
    for a in {a for _, a, _ in tasks}:
        course.check_assignment(a)
    assignments = sorted({a for _, a, _ in tasks})
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rlhf-grade-all-") as tmp:  # the assignment, generated once, cached
        with course_environment():
            prepare_course(Path(tmp) / "course", assignments)
    results: list[dict] = []
    workers = max(1, min(int(workers), len(tasks)))
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                             initargs=(assignments, limits, show_hidden_tests, str(course.ROOT))) as pool:
        futures = {pool.submit(_worker_grade, (s, a, str(p), str(out / "feedback" / s / a))): (s, a)
                   for s, a, p in tasks}
        for fut in as_completed(futures):
            student, assignment = futures[fut]
            try:
                result = fut.result()
            except BrokenProcessPool as exc:
                result = {"student": student, "assignment": assignment, "notebook": assignment, "score": 0.0,
                          "max_score": None, "cells": [], "notes": [],
                          "error": f"a grading worker died ({exc}); grade this submission again"}
            results.append(result)
            if on_result is not None:
                on_result(result)
    results.sort(key=lambda r: (r["student"], r["assignment"]))
    write_outputs(out, results)
    return results


def write_outputs(out: Path, results: list[dict]) -> None:
    from autograder import report

    with open(out / "grades.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student", "assignment", "score", "max_score", "status"])
        for r in results:
            w.writerow([r["student"], r["assignment"], r["score"], r["max_score"], "error" if r.get("error") else "graded"])
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    for r in results:
        dest = out / "feedback" / r["student"] / r["assignment"]
        dest.mkdir(parents=True, exist_ok=True)
        (dest / f"{r['assignment']}.json").write_text(json.dumps(student_view(r), indent=1), encoding="utf-8")
    report.write_report(out, results)


def student_view(result: dict) -> dict:
    """What a student is shown: points and messages, no grader internals."""
    keep = ("student", "assignment", "score", "max_score", "cells", "notes", "error")
    return {k: result[k] for k in keep if k in result}
