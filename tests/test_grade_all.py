"""``python -m autograder grade-all --workers 2`` on a small class of notebook 06.

One run covers: two workers (each its own process and gradebook) merged into one ``grades.csv``,
``results.json`` and per-student feedback; determinism (three students submit the same notebook:
identical scores, messages and feedback); the per-notebook time limit (one student's function sleeps,
the notebook runs out of time: a clear "limit exceeded", later cells *not run*, earlier ones keep their
points); isolation (that student also tries to overwrite another student's submission, graded folder,
feedback and the gradebook: nothing changes); and the instructor report (``report.csv`` +
``report.png``). The benchmark (``benchmarks/grading.py``) repeats a submission 10 times.
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_hostile import Case, build, release  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parent.parent
NB = "06_gae"
TIME_LIMIT = 30


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


def test_grade_all_two_workers(release, tmp_path):
    subs, out = tmp_path / "submissions", tmp_path / "out"
    mixed = [Case("wrong dtype", "masked_whiten", (), result="_reference(*args, **kwargs).double()"),
             Case("not written", "compute_gae", (), body="raise NotImplementedError()")]
    intruder = (
        "import time\n"
        "for _p in [" + ", ".join(repr(str(p)) for p in (
            subs / "ada" / NB / f"{NB}.ipynb", out / "feedback" / "ada" / NB / f"{NB}.html",
            out / "grades.csv")) + ",\n"
        f"           '../../ada/{NB}/{NB}.ipynb', '../../../gradebook.db', '../../../submitted/ada/{NB}/{NB}.ipynb']:\n"
        "    try:\n"
        "        with open(_p, 'w') as _f:\n"
        "            _f.write('overwritten by another student')\n"
        "    except OSError:\n"
        "        pass\n"
        "time.sleep(3)"
    )
    notebooks = {
        "ada": build(release, []),
        "bo": release[0],  # the blank release
        "cy1": build(release, mixed), "cy2": build(release, mixed), "cy3": build(release, mixed),
        "dee": build(release, [Case("sleeps, and writes into other students' files", "per_token_rewards", (),
                                    body=intruder)]),
    }
    for student, nb in notebooks.items():
        (subs / student / NB).mkdir(parents=True)
        (subs / student / NB / f"{NB}.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    before = digest(subs)
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade-all", str(subs), "--out", str(out),
                           "--workers", "2", "--time-limit", str(TIME_LIMIT), "--cell-timeout", "60"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert digest(subs) == before, "a submission changed while the class was graded"

    rows = {r["student"]: r for r in csv.DictReader((out / "grades.csv").open())}
    assert sorted(rows) == sorted(notebooks)
    results = {r["student"]: r for r in json.loads((out / "results.json").read_text())}
    assert len({r["worker"] for r in results.values()}) == 2, "two workers, each grading part of the class"
    assert float(rows["ada"]["score"]) == float(rows["ada"]["max_score"]) == 24
    assert float(rows["bo"]["score"]) == 0
    for student in notebooks:
        html = out / "feedback" / student / NB / f"{NB}.html"
        assert html.is_file()
        assert student == "dee" or "overwritten by another student" not in html.read_text(encoding="utf-8")

    # Determinism: the same notebook, graded three times (by either worker), the same grade and feedback.
    views = [json.loads((out / "feedback" / s / NB / f"{NB}.json").read_text()) for s in ("cy1", "cy2", "cy3")]
    for v in views:
        v.pop("student")
    assert views[0] == views[1] == views[2]
    assert views[0]["score"] == 24 - 2 - 5  # masked_whiten's value test (2) and compute_gae's tests (4 + 1) lost
    pages = [(out / "feedback" / s / NB / f"{NB}.html").read_text(encoding="utf-8").replace(s, "cy")
             for s in ("cy1", "cy2", "cy3")]
    assert pages[0] == pages[1] == pages[2], "the feedback differs between identical submissions"
    cells = {c["grade_id"]: c for c in views[0]["cells"]}
    assert "NotImplementedError" in cells["test_compute_gae"]["message"]
    assert "dtype" in cells["test_masked_whiten"]["message"]

    # The time limit: dee's notebook ran out of time in per_token_rewards' test; earlier cells kept their points.
    dee = {c["grade_id"]: c for c in results["dee"]["cells"]}
    assert dee["test_per_token_rewards"]["status"] == "time limit", dee["test_per_token_rewards"]
    assert f"time limit of {TIME_LIMIT:g} s" in dee["test_per_token_rewards"]["message"]
    assert all(dee[g]["status"] == "not run" for g in ("test_td_residuals", "test_compute_gae_errors"))
    assert all(dee[g]["score"] == dee[g]["max_score"] for g in ("test_masked_mean", "test_kl_estimate_errors"))

    # The instructor report: per graded function, the share failing and the most common message.
    report = {r["function"]: r for r in csv.DictReader((out / "report.csv").open())}
    assert float(report["compute_gae"]["share_failed"]) == pytest.approx(5 / 6, abs=1e-3)  # bo, cy1-3, dee
    assert "NotImplementedError" in report["compute_gae"]["most_common_failure"]
    assert float(report["masked_mean"]["share_failed"]) == pytest.approx(1 / 6, abs=1e-3)  # bo only
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
