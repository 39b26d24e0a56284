"""Temporary nbgrader courses built from the source notebooks, and the nbgrader calls on them.

Every command builds a fresh course folder so that nothing depends on an instructor's
local nbgrader state:

    <course>/nbgrader_config.py
    <course>/source/<id>/<id>.ipynb      the source notebook (solutions + hidden tests)
    <course>/source/<id>/helpers/        course infrastructure (no solutions)
    <course>/source/<id>/minirlhf/       reference code of notebooks BEFORE <id> only
    <course>/source/<id>/artifacts/      the trained models <id> loads, prebuilt (+ sources.json)

``builders/`` (what trains those models) is never copied: it would show students graded answers.
``generate_assignment`` turns it into ``release/<id>/``; ``autograde`` restores every
non-notebook file of ``source/<id>/`` into the graded copy, so a student cannot grade
against a tampered ``helpers`` or ``minirlhf``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from helpers.export import export, source_notebooks

ROOT = Path(__file__).resolve().parent.parent
STUDENT = "student"

# The course's nbgrader settings, written once. Both the temporary courses below (CONFIG_TEMPLATE) and the
# repository's own nbgrader_config.py (the formgrader, `nbgrader ...` at the root) apply exactly these.
NBGRADER_SETTINGS: dict[str, object] = {
    # "comparisons" and "ppo_output": what notebooks 03 and 08 write beside themselves when run in the source tree
    "CourseDirectory.ignore": [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "comparisons", "ppo_output"],
    "ClearSolutions.code_stub": {"python": "# YOUR CODE HERE\nraise NotImplementedError()"},
}


def configure_nbgrader(c) -> None:
    """Apply NBGRADER_SETTINGS to the traitlets config ``c`` of an ``nbgrader_config.py``."""
    for key, value in NBGRADER_SETTINGS.items():
        section, name = key.split(".")
        setattr(getattr(c, section), name, value)


CONFIG_TEMPLATE = '''c = get_config()  # noqa: F821
c.CourseDirectory.root = {root!r}
c.CourseDirectory.db_url = "sqlite:///{root}/gradebook.db"
{settings}
# nbgrader's default cell timeout (30 s) is kept on purpose: the course is built to grade under it.
'''


class GradingError(RuntimeError):
    """nbgrader failed; the message carries its log."""


def notebook_ids(root: Path = ROOT) -> list[str]:
    return [nb_id for nb_id, _ in source_notebooks(root)]


def earlier_notebooks(nb_id: str, root: Path = ROOT) -> list[str]:
    """The notebooks whose reference code a release of ``nb_id`` carries in ``minirlhf/``: those before it.

    So a class gets notebook k's folder only after notebook k-1's deadline (``python -m autograder release``).
    """
    return [earlier for earlier in notebook_ids(root) if earlier < nb_id]


def check_assignment(assignment: str, root: Path = ROOT) -> Path:
    ids = dict(source_notebooks(root))
    if assignment not in ids:
        raise SystemExit(f"unknown assignment {assignment!r}; the course has: {', '.join(ids) or 'none'}")
    return ids[assignment]


def nbgrader_env() -> dict[str, str]:
    """The environment for nbgrader and its kernels: this interpreter's bin first on PATH.

    The ``python3`` kernel spec runs ``python`` from PATH, so without this a kernel could
    start in another interpreter that has no torch.
    """
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("NBGRADER_EXECUTION", None)  # nbgrader sets it itself while grading
    env.setdefault("COURSE_NO_PROGRESS", "1")
    env.setdefault("MPLBACKEND", "Agg")
    return env


def run_nbgrader(course: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "nbgrader", *args, f"--CourseDirectory.root={course}"]
    env = nbgrader_env()
    # Grading runs tiny configurations: one BLAS thread avoids oversubscription stalls on small cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    proc = subprocess.run(cmd, cwd=course, env=env, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise GradingError(f"`nbgrader {' '.join(args)}` failed (exit {proc.returncode}):\n{log[-4000:]}")
    return log


# The trained models each notebook loads (helpers.artifacts names). They ship prebuilt beside the
# notebook (``<id>/artifacts/``) so that students never wait and grading never trains.
NOTEBOOK_ARTIFACTS: dict[str, tuple[str, ...]] = {
    "01_tokenizer_gpt2": ("default_model",),  # its model demos, offline: the trained default model
    "02_sft": ("default_model",),
    "03_preference_data": ("default_model", "sft_model"),
    "04_reward_model": ("sft_model", "comparisons"),
    "05_value_head": ("sft_model", "reward_model"),
    "08_ppo_loop": ("sft_model", "reward_model"),
}


def ship_artifacts(dest: Path, nb_id: str, *, full: bool) -> None:
    """Copy the artifacts ``nb_id`` needs into ``dest/artifacts`` (tiny ones always; full ones if asked)."""
    names = NOTEBOOK_ARTIFACTS.get(nb_id, ())
    if not names:
        return
    from helpers import artifacts

    for tiny in (True, False) if full else (True,):
        artifacts.ship(dest, names, tiny=tiny)


def build_course(course: Path, assignments: list[str], root: Path = ROOT, *, full_artifacts: bool = False) -> Path:
    """Lay out an nbgrader course for ``assignments`` in the (new or empty) folder ``course``."""
    course.mkdir(parents=True, exist_ok=True)
    settings = "\n".join(f"c.{key} = {value!r}" for key, value in NBGRADER_SETTINGS.items())
    (course / "nbgrader_config.py").write_text(CONFIG_TEMPLATE.format(root=str(course), settings=settings),
                                               encoding="utf-8")
    for nb_id in assignments:
        src_nb = check_assignment(nb_id, root)
        dest = course / "source" / nb_id
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(src_nb, dest / src_nb.name)
        stage_assignment(dest, nb_id, root, full_artifacts=full_artifacts)
    return course


COURSE_FILES = ("helpers", "minirlhf", "artifacts")  # what a release holds beside the notebook


def stage_assignment(dest: Path, nb_id: str, root: Path = ROOT, *, full_artifacts: bool, replace: bool = False) -> Path:
    """Put into ``dest`` what goes beside notebook ``nb_id``: the one definition of a release's files.

    ``helpers/`` (no solutions), ``minirlhf/`` with the reference code of the notebooks before ``nb_id`` only,
    and ``artifacts/`` (tiny models always, full ones if asked). ``replace`` first removes any copies already
    there (a student's, in a graded folder). :func:`build_course` calls it for ``python -m autograder
    release/grade``; the repository's ``nbgrader_config.py`` calls it through ``autograder.nbgrader_course``.
    """
    if replace:
        for name in COURSE_FILES:
            if (dest / name).is_symlink() or (dest / name).is_file():
                (dest / name).unlink()
            elif (dest / name).exists():
                shutil.rmtree(dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    shutil.copytree(root / "helpers", dest / "helpers", ignore=ignore, dirs_exist_ok=True)
    if earlier_notebooks(nb_id, root):
        export(root, dest, before=nb_id)
    ship_artifacts(dest, nb_id, full=full_artifacts)
    return dest


def generate_assignment(course: Path, assignment: str) -> Path:
    run_nbgrader(course, "generate_assignment", assignment, "--force")
    return course / "release" / assignment


@dataclass
class CellScore:
    grade_id: str
    score: float
    max_score: float


@dataclass
class NotebookScore:
    student: str
    assignment: str
    notebook: str
    score: float
    max_score: float
    cells: list[CellScore] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "student": self.student,
            "assignment": self.assignment,
            "notebook": self.notebook,
            "score": self.score,
            "max_score": self.max_score,
            "cells": [c.__dict__ for c in self.cells],
        }


def read_scores(course: Path, assignment: str, student: str) -> list[NotebookScore]:
    from nbgrader.api import Gradebook

    from helpers.notebook import nbgrader_meta, read_notebook

    scores = []
    with Gradebook(f"sqlite:///{course}/gradebook.db") as gb:
        submission = gb.find_submission(assignment, student)
        for nb in submission.notebooks:
            source = read_notebook(course / "source" / assignment / f"{nb.name}.ipynb")
            order = [nbgrader_meta(c).get("grade_id") for c in source["cells"]]
            cells = [
                CellScore(g.cell.name, float(g.score), float(g.max_score))
                for g in sorted(nb.grades, key=lambda g: order.index(g.cell.name) if g.cell.name in order else 1e9)
            ]
            scores.append(NotebookScore(student, assignment, nb.name, float(nb.score), float(nb.max_score), cells))
    return scores


def submit(course: Path, assignment: str, student: str, notebook: Path) -> None:
    dest = course / "submitted" / student / assignment
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(notebook, dest / f"{assignment}.ipynb")


def autograde(course: Path, assignment: str, student: str | None = None) -> str:
    args = ["autograde", assignment, "--create", "--force"]
    if student:
        args.append(f"--student={student}")
    return run_nbgrader(course, *args)


def generate_feedback(course: Path, assignment: str) -> Path:
    run_nbgrader(course, "generate_feedback", assignment, "--force")
    return course / "feedback"
