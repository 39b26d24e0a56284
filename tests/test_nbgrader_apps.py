"""nbgrader's own tools on the repository's ``nbgrader_config.py``: the formgrader's buttons, without a browser.

A course folder here is the repository seen through symlinks (``autograder/``, ``helpers/``, ``builders/``,
``notebooks/``) beside a copy of ``nbgrader_config.py``, so that what nbgrader writes (``release/``,
``exchange/``, ``submitted/``, ``gradebook.db`` ...) lands in a temporary folder. The instructor's steps go
through ``nbgrader.apps.NbGraderAPI``, the object behind every formgrader button, configured the way the
formgrader configures it (``nbgrader_config.py`` of the folder ``jupyter lab`` started in); the students'
through the exchange classes behind the Assignments tab. Notebook 06 is the assignment: it loads no trained
model, and grading it runs about 10 s of cells.

The students' environment: a virtual environment on top of the course's packages stands in for a
JupyterHub image, and ``python -m autograder student-env --apply`` runs in it.

The screenshot of the formgrader's "Manage Assignments" page (where Chromium is installed):
``FORMGRADER_SCREENSHOT=formgrader.png .venv/bin/python -m pytest tests/test_nbgrader_apps.py -k server``.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from autograder import course, nbgrader_course
from helpers.export import module_name
from helpers.notebook import cell_kind, cell_source, nbgrader_meta, read_notebook

NB_ID = "06_gae"
LINKED = ("autograder", "helpers", "builders", "notebooks")  # the repository, as a course folder sees it
COURSE_VARIABLES = ("OMP_", "MKL_", "OPENBLAS_", "COURSE_", "RLHF_", "NBGRADER_", "GPT2_", "MPLBACKEND")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT_VARIABLE = "FORMGRADER_SCREENSHOT"  # where test_the_formgrader_page... keeps its screenshot

pytestmark = pytest.mark.filterwarnings("ignore:.*not in session:sqlalchemy.exc.SAWarning")  # nbgrader's own noise


@pytest.fixture
def course_folder(tmp_path, monkeypatch) -> Path:
    """A course folder as the working directory, in an instructor's shell (none of the course's variables)."""
    crs = tmp_path / "course"
    crs.mkdir()
    shutil.copy(course.ROOT / "nbgrader_config.py", crs / "nbgrader_config.py")
    for name in LINKED:
        (crs / name).symlink_to(course.ROOT / name, target_is_directory=True)
    for key in [k for k in os.environ if k.startswith(COURSE_VARIABLES)]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("RLHF_COURSE_CACHE", str(tmp_path / "empty_cache"))  # 06 loads no artifact: none is built
    monkeypatch.chdir(crs)
    monkeypatch.setattr(sys, "path", list(sys.path))  # nbgrader_config.py puts its folder on sys.path
    monkeypatch.setenv("PATH", os.environ["PATH"])  # and this interpreter's bin on PATH
    return crs


def formgrader_api(crs: Path):
    """``NbGraderAPI`` as the formgrader makes it: ``nbgrader_config.py`` read from the working folder."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.apps.baseapp import NbGrader

    app = NbGrader()
    app.load_config_file()  # nbgrader logs a broken config file and goes on with defaults: check it loaded
    assert app.config.CourseDirectory.course_id == nbgrader_course.COURSE_ID, "nbgrader_config.py did not load"
    assert Path(app.config.CourseDirectory.root) == crs
    return NbGraderAPI(parent=app)


def check(result: dict) -> str:
    """A formgrader button's result: it must have succeeded."""
    assert result["success"], result.get("error", "") + result.get("log", "")[-3000:]
    return result.get("log", "")


def student_app(kind: str, home: Path, student: str, exchange: Path):
    """The exchange class the Assignments tab calls for ``kind`` (``FetchAssignment``, ``Submit``)."""
    from nbgrader.auth import Authenticator
    from nbgrader.coursedir import CourseDirectory
    from nbgrader.exchange import ExchangeFactory
    from traitlets.config import Config

    cfg = Config()
    cfg.Exchange.root = str(exchange)
    cfg.Exchange.cache = str(home.parent / "nbgrader_cache")
    cfg.Exchange.assignment_dir = str(home)
    cfg.CourseDirectory.root = str(home)
    cfg.CourseDirectory.course_id = nbgrader_course.COURSE_ID
    cfg.CourseDirectory.assignment_id = NB_ID
    cfg.CourseDirectory.student_id = student
    factory = ExchangeFactory(config=cfg)
    return getattr(factory, kind)(coursedir=CourseDirectory(config=cfg), authenticator=Authenticator(config=cfg),
                                  config=cfg)


def read_score(crs: Path, student: str) -> tuple[float, float, dict[str, float]]:
    """(score, max_score, {grade_id: score}) of ``student``'s notebook in the course's gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{crs / 'gradebook.db'}") as gb:
        nb = gb.find_submission_notebook(NB_ID, NB_ID, student)
        return float(nb.score), float(nb.max_score), {g.name: float(g.score) for g in nb.grades}


def tree(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_formgrader_page_of_a_server_started_in_the_repository(course_folder, tmp_path):
    """A real Jupyter server started in the course folder, as `jupyter lab` is: its formgrader lists every notebook."""
    token, port = "course-test", free_port()
    env = os.environ | {"JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "run")}
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "jupyter_server", "--no-browser", f"--ServerApp.port={port}",
                               "--ServerApp.port_retries=0", "--allow-root", f"--IdentityProvider.token={token}"],
                              cwd=course_folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def get(path: str) -> str:
        with urllib.request.urlopen(f"{url}{path}?token={token}", timeout=30) as response:
            return response.read().decode()

    try:
        for _ in range(240):
            try:
                get("/api/status")
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
                time.sleep(0.5)
        assert {a["name"] for a in json.loads(get("/formgrader/api/assignments"))} == set(course.notebook_ids())
        page = get("/formgrader/manage_assignments")
        assert nbgrader_course.COURSE_ID in page and 'id="warning-exchange"' not in page
        if CHROMIUM:  # the figure: what "Manage Assignments" shows
            png = Path(os.environ.get(SCREENSHOT_VARIABLE) or tmp_path / "formgrader.png")
            subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            f"--screenshot={png}", "--window-size=1400,900", "--virtual-time-budget=15000",
                            f"{url}/formgrader/manage_assignments?token={token}"],
                           capture_output=True, timeout=120, check=True)
            assert png.stat().st_size > 10_000
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_the_exchange_is_course_local_unless_its_variable_moves_it(course_folder, monkeypatch, tmp_path):
    api = formgrader_api(course_folder)
    assert api.get_source_assignments() == set(course.notebook_ids())
    assert Path(api.exchange_root) == course_folder / "exchange" and api.exchange_is_functional
    shutil.rmtree(course_folder / "exchange")
    (tmp_path / "hub_exchange").mkdir()
    monkeypatch.setenv(nbgrader_course.EXCHANGE_VARIABLE, str(tmp_path / "hub_exchange"))
    api = formgrader_api(course_folder)
    assert Path(api.exchange_root) == tmp_path / "hub_exchange" and api.exchange_is_functional
    assert not (course_folder / "exchange").exists()


def test_generate_assignment_writes_what_autograder_release_writes(course_folder, tmp_path):
    check(formgrader_api(course_folder).generate_assignment(NB_ID))
    crs = course.build_course(tmp_path / "cli", [NB_ID], full_artifacts=True)  # `python -m autograder release`
    ours, theirs = tree(course_folder / "release" / NB_ID), tree(course.generate_assignment(crs, NB_ID))
    assert sorted(ours) == sorted(theirs)
    differ = [name for name in ours if not filecmp.cmp(ours[name], theirs[name], shallow=False)]
    assert not differ, f"files that differ from `python -m autograder release {NB_ID}`: {differ}"


# ----------------------------------------------------------------------------- the round trip


def holds_the_earlier_notebooks_code_only(folder: Path) -> None:
    modules = {p.stem for p in (folder / "minirlhf").glob("*.py")}
    assert modules == {"__init__"} | {module_name(i) for i in course.earlier_notebooks(NB_ID)}, folder
    assert (folder / "helpers" / "checks.py").is_file() and not (folder / "builders").exists(), folder
    code = "\n".join(cell_source(c) for c in read_notebook(folder / f"{NB_ID}.ipynb")["cells"])
    assert "BEGIN SOLUTION" not in code and "BEGIN HIDDEN TESTS" not in code, folder
    assert re.search(r"# YOUR CODE HERE\n\s*raise NotImplementedError\(\)", code), "the course's stub text"


def scores_full_marks_and_zero(crs: Path) -> None:
    source = read_notebook(course.check_assignment(NB_ID))
    points = sum(nbgrader_meta(c)["points"] for c in source["cells"] if cell_kind(c) == "test")
    (alice, alice_max, alice_cells), (bob, bob_max, bob_cells) = read_score(crs, "alice"), read_score(crs, "bob")
    assert alice_max == bob_max == points > 0
    assert alice == points, {k: v for k, v in alice_cells.items() if v == 0}
    assert bob == 0, {k: v for k, v in bob_cells.items() if v}


def graded_with_the_instructors_course_files(crs: Path) -> None:
    graded = crs / "autograded" / "bob" / NB_ID  # bob's helpers/checks.py was tampered with
    assert filecmp.cmp(graded / "helpers" / "checks.py", course.ROOT / "helpers" / "checks.py", shallow=False)
    released = tree(crs / "release" / NB_ID / "minirlhf")
    assert all(filecmp.cmp(p, released[name], shallow=False) for name, p in tree(graded / "minirlhf").items())


def test_round_trip_generate_release_fetch_submit_collect_autograde_feedback(course_folder, tmp_path):
    crs = course_folder
    api = formgrader_api(crs)
    exchange = Path(api.exchange_root)
    check(api.generate_assignment(NB_ID))
    check(api.release_assignment(NB_ID))
    holds_the_earlier_notebooks_code_only(crs / "release" / NB_ID)
    holds_the_earlier_notebooks_code_only(exchange / nbgrader_course.COURSE_ID / "outbound" / NB_ID)

    homes = {s: tmp_path / "students" / s for s in ("alice", "bob")}
    for student, home in homes.items():
        home.mkdir(parents=True)
        student_app("FetchAssignment", home, student, exchange).start()
    holds_the_earlier_notebooks_code_only(homes["bob"] / NB_ID)
    shutil.copy(course.check_assignment(NB_ID), homes["alice"] / NB_ID / f"{NB_ID}.ipynb")  # the solution
    (homes["bob"] / NB_ID / "helpers" / "checks.py").write_text("raise SystemExit('tampered')\n")  # and blank
    for student, home in homes.items():
        student_app("Submit", home, student, exchange).start()

    check(api.collect(NB_ID))
    assert {a["name"]: a for a in api.get_assignments()}[NB_ID]["num_submissions"] == 2
    for student in homes:
        check(api.autograde(NB_ID, student))
    scores_full_marks_and_zero(crs)
    graded_with_the_instructors_course_files(crs)

    check(api.generate_feedback(NB_ID, "alice"))
    score, max_score, _ = read_score(crs, "alice")
    html = (crs / "feedback" / "alice" / NB_ID / f"{NB_ID}.html").read_text(encoding="utf-8")
    assert f"Score: {score:.1f} / {max_score:.1f}" in html


# ----------------------------------------------------------------------------- the students' environment


def image_environment(folder: Path) -> Path:
    """A virtual environment over the course's packages, with its own prefix: a stand-in for a student image."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    venv = Path(sys.prefix)
    site = next((folder / "lib").glob("python3*/site-packages"))
    (site / "course_packages.pth").write_text(f"import site; site.addsitedir({str(next(venv.glob('lib/python3*/site-packages')))!r})\n")
    shutil.copytree(venv / "etc" / "jupyter", folder / "etc" / "jupyter")  # nbgrader enabled its extensions here
    (folder / "share").mkdir(exist_ok=True)
    (folder / "share" / "jupyter").symlink_to(venv / "share" / "jupyter")  # the lab extensions, read only
    for script in ("jupyter", "jupyter-labextension", "jupyter-server", "nbgrader"):
        body = (venv / "bin" / script).read_text().split("\n", 1)[1]
        (folder / "bin" / script).write_text(f"#!{folder / 'bin' / 'python'}\n{body}")
        (folder / "bin" / script).chmod(0o755)
    return folder


def test_student_env_hides_the_instructor_tools_and_keeps_the_assignments_tab(tmp_path):
    image = image_environment(tmp_path / "image")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "COURSE_", "RLHF_"))}
    env |= {"JUPYTER_CONFIG_DIR": str(tmp_path / "user_config"), "PATH": f"{image / 'bin'}{os.pathsep}{env['PATH']}"}
    exchange = tmp_path / "exchange"
    (exchange / nbgrader_course.COURSE_ID / "outbound" / NB_ID).mkdir(parents=True)  # a released assignment

    home = tmp_path / "home"  # a student's folder: no instructor nbgrader_config.py around
    home.mkdir()

    def run(*cmd: str) -> str:
        proc = subprocess.run(cmd, cwd=home, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        return re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)

    run(str(image / "bin" / "python"), "-m", "autograder", "student-env", "--apply", "--exchange", str(exchange))
    servers = run(str(image / "bin" / "jupyter"), "server", "extension", "list")
    assert re.search(r"nbgrader\.server_extensions\.formgrader\s+disabled", servers), servers
    assert re.search(r"nbgrader\.server_extensions\.assignment_list\s+enabled", servers), servers
    labs = run(str(image / "bin" / "jupyter"), "labextension", "list")
    disabled = labs.split("Disabled extensions:")[-1]
    assert "@jupyter/nbgrader:formgrader" in disabled and "@jupyter/nbgrader:create-assignment" in disabled, labs
    assert "assignment-list" not in disabled, labs
    # What the Assignments tab lists: the exchange, from the students' nbgrader_config.py that --apply wrote.
    listed = run(str(image / "bin" / "nbgrader"), "list")
    assert f"{nbgrader_course.COURSE_ID} {NB_ID}" in listed, listed
    assert not list((Path(sys.prefix) / "etc" / "jupyter").glob("nbgrader_config.py")), "the course's venv was changed"
