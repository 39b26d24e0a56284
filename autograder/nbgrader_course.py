"""The repository itself as an nbgrader course: what its ``nbgrader_config.py`` adds to nbgrader's apps.

nbgrader copies every file of the source folder ``notebooks/<id>/`` into ``release/<id>/``
(``generate_assignment``) and, over the student's copies, into ``autograded/<student>/<id>/``
(``autograde``). The source folder holds only the notebook: ``helpers/`` lives once at the root,
``minirlhf/`` is generated, and the trained models come from the artifact cache. Two preprocessors put
them beside the notebook with :func:`autograder.course.stage_assignment`, the function
``python -m autograder release/grade`` use, so both routes give the same folder:

- :class:`ShipCourseFiles`, last of ``GenerateAssignment``'s preprocessors: ``release/<id>/`` gets
  ``helpers/``, the ``minirlhf`` modules of the earlier notebooks, and the full and tiny artifacts.
- :class:`RestoreCourseFiles`, first of ``Autograde``'s execution preprocessors (before ``Execute``):
  fresh copies replace the student's in ``autograded/<student>/<id>/`` (tiny artifacts, what grading
  loads), so a tampered ``helpers/`` or ``minirlhf/`` cannot change a grade.

Why not stage the files into ``notebooks/<id>/``: the source notebook, run there, would import those
copies (the kernel's working directory comes first on ``sys.path``) instead of the root's ``helpers/``
and the self-refreshing ``minirlhf/``, and go stale at the first edit. Why not nbgrader's
``pre/post_convert_hook``: a hook's exception is logged at INFO and swallowed, so a release without
``helpers/`` would look like a success; a preprocessor's exception fails the app, and the formgrader's
button, with its traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nbgrader.converters import Autograde, GenerateAssignment
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Bool

from autograder import course

COURSE_ID = "rlhf-ppo-gpt2"
EXCHANGE_VARIABLE = "RLHF_EXCHANGE"  # moves the exchange (e.g. a JupyterHub's /srv/nbgrader/exchange)


class ShipCourseFiles(NbGraderPreprocessor):
    """Write ``helpers/``, ``minirlhf/`` (earlier notebooks) and ``artifacts/`` into the converter's output folder."""

    full_artifacts = Bool(True, help="Ship the full-size models the demos load, not only the tiny grading ones").tag(
        config=True)

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        dest = Path(self._converter()._format_dest(info["assignment"], info["student"]))
        course.stage_assignment(dest, info["assignment"], full_artifacts=self.full_artifacts, replace=True)
        return nb, resources

    def _converter(self):
        """The nbgrader converter running this preprocessor (preprocessor -> exporter -> converter)."""
        owner = self.parent
        while owner is not None and not hasattr(owner, "_format_dest"):
            owner = owner.parent
        if owner is None:
            raise RuntimeError(f"{type(self).__name__} runs only inside nbgrader's GenerateAssignment or Autograde")
        return owner


class RestoreCourseFiles(ShipCourseFiles):
    """Replace a submission's ``helpers/``, ``minirlhf/`` and ``artifacts/`` by the instructor's before it runs."""

    full_artifacts = Bool(False, help="Grading loads only the tiny models").tag(config=True)


def exchange_root(root: str | os.PathLike = course.ROOT) -> str:
    """The exchange folder: ``$RLHF_EXCHANGE``, else ``<root>/exchange``."""
    return os.environ.get(EXCHANGE_VARIABLE) or str(Path(root).resolve() / "exchange")


def _default(cls, trait: str) -> list[str]:
    """nbgrader's default preprocessors of ``cls``, as import names (the formgrader shows the config as JSON)."""
    return [_name(pp) for pp in cls.class_traits()[trait].default()]


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def configure(c, root: str | os.PathLike) -> None:
    """The repository's nbgrader settings (``nbgrader_config.py`` at ``root`` calls this)."""
    root = Path(root).resolve()
    c.CourseDirectory.root = str(root)
    c.CourseDirectory.course_id = COURSE_ID
    c.CourseDirectory.source_directory = "notebooks"  # notebooks/<id>/<id>.ipynb, the source notebooks
    c.CourseDirectory.release_directory = "release"  # release/<id>/, the folder `python -m autograder release` writes
    c.CourseDirectory.submitted_directory = "submitted"  # submitted/<student>/<id>/ (nbgrader collect)
    c.CourseDirectory.autograded_directory = "autograded"  # autograded/<student>/<id>/
    c.CourseDirectory.feedback_directory = "feedback"  # feedback/<student>/<id>/<id>.html
    c.CourseDirectory.db_url = f"sqlite:///{root / 'gradebook.db'}"
    course.configure_nbgrader(c)  # the stub text and ignored files, as in `python -m autograder release/grade`

    c.Exchange.root = exchange_root(root)
    if not os.environ.get(EXCHANGE_VARIABLE) and not os.path.isdir(c.Exchange.root):
        os.makedirs(c.Exchange.root)  # else the formgrader warns that the exchange is missing
        os.chmod(c.Exchange.root, 0o777)  # what `nbgrader release_assignment` sets: every student writes there

    # This interpreter's bin first on PATH, as in an activated venv: nbgrader runs `alembic` from PATH to
    # create gradebook.db, and the python3 kernel spec runs `python` from PATH (else a kernel without torch).
    bindir = os.path.dirname(sys.executable)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bindir:
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")

    c.GenerateAssignment.preprocessors = _default(GenerateAssignment, "preprocessors") + [_name(ShipCourseFiles)]
    graded = _default(Autograde, "autograde_preprocessors")
    execute = graded.index(_name(Execute))
    c.Autograde.autograde_preprocessors = graded[:execute] + [_name(RestoreCourseFiles)] + graded[execute:]


# ----------------------------------------------------------------------------- the students' environment

# nbgrader enables all its extensions wherever it is installed. A students' environment (the JupyterHub
# image) keeps the Assignments tab (assignment-list: fetch and submit through the exchange), Validate and
# the course list, and loses the instructor's tools:
STUDENT_DISABLED = (
    ["jupyter", "labextension", "disable", "--level=sys_prefix", "@jupyter/nbgrader:formgrader",
     "@jupyter/nbgrader:create-assignment"],
    # The formgrader's server side (create-assignment has none). At --sys-prefix, where pip enabled it:
    # jupyter_server toggles an extension only at a level that already lists it, so --user fails.
    ["jupyter", "server", "extension", "disable", "--sys-prefix", "nbgrader.server_extensions.formgrader"],
)
STUDENT_CONFIG_MARK = "# written by `python -m autograder student-env --apply`"


def student_config(exchange: str) -> str:
    """The students' ``nbgrader_config.py``: where the Assignments tab finds the course's releases."""
    return ("c = get_config()  # noqa: F821\n"
            f"c.Exchange.root = {exchange!r}\n"
            f"c.CourseDirectory.course_id = {COURSE_ID!r}\n")


def student_env_instructions(exchange: str) -> str:
    commands = "\n".join(" ".join(cmd) for cmd in STUDENT_DISABLED)
    return f"""# In the students' environment (e.g. a RUN line of the JupyterHub image), with nbgrader installed:
{commands}
# Kept: the Assignments tab (@jupyter/nbgrader:assignment-list + nbgrader.server_extensions.assignment_list),
# Validate and the course list. Check with `jupyter labextension list` and `jupyter server extension list`.
#
# The students' nbgrader_config.py, e.g. <env>/etc/jupyter/nbgrader_config.py or /etc/jupyter/nbgrader_config.py
# (the exchange must be the folder the instructor releases into, writable by every student):
{student_config(exchange)}
# `python -m autograder student-env --apply` does all of this in the environment it runs in."""


def apply_student_env(exchange: str) -> Path:
    """Disable the instructor's extensions in this Python environment and write its students' nbgrader config."""
    prefix = Path(sys.prefix)
    if prefix.resolve() == (course.ROOT / ".venv").resolve():
        raise SystemExit(f"{prefix} is the course's own (instructor's) environment: run this with the students' Python")
    jupyter = Path(sys.executable).parent / "jupyter"  # this environment's, not the first one on PATH
    if not jupyter.is_file():
        raise SystemExit(f"no {jupyter}: install the course's requirements (nbgrader, jupyterlab) in this environment")
    for cmd in STUDENT_DISABLED:
        proc = subprocess.run([str(jupyter), *cmd[1:]], capture_output=True, text=True)
        log = proc.stdout + proc.stderr
        # `jupyter server extension disable` reports a failed validation on stderr and still exits 0
        if proc.returncode != 0 or "Validation failed" in log:
            raise SystemExit(f"`{' '.join(cmd)}` failed:\n{log[-2000:]}")
        print(f"done: {' '.join(cmd)}")
    config = prefix / "etc" / "jupyter" / "nbgrader_config.py"
    if config.exists() and STUDENT_CONFIG_MARK not in config.read_text(encoding="utf-8"):
        print(f"left alone: {config} (not written by this command); it should say:\n{student_config(exchange)}")
    else:
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(f"{STUDENT_CONFIG_MARK}\n{student_config(exchange)}", encoding="utf-8")
        print(f"wrote {config}: exchange {exchange}, course {COURSE_ID}")
    return config
